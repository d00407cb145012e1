"""SIGHUP reloads all or nothing; SIGTERM drains running runs, then interrupts what outlives the grace."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.support.daemon import DaemonProcess
from tests.support.workflows import notify_workflow

SLOW_SCRIPT = "#!/bin/sh\nsleep \"$1\"\n"


def slow_workflow(seconds: float) -> str:
    return f"""workflow_id: slow
trigger: {{type: malware}}
steps:
  - step_id: wait
    action: run_script
    params: {{script: slow.sh, args: ["{seconds}"], timeout: 120}}
  - step_id: done
    action: send_notification
    params: {{message: "done", channel: log}}
"""


def _workflows(d: DaemonProcess) -> int:
    with d.client() as c:
        return int(c.call("status")["workflows"])


def test_sighup_with_a_broken_workflow_keeps_the_old_set(daemon: DaemonProcess) -> None:
    daemon.write_workflow("broken", "workflow_id: broken\nsteps:\n  - step_id: x\n    action: no_such_action\n")
    daemon.write_workflow("extra", notify_workflow("extra", 1, "pua"))
    daemon.signal(signal.SIGHUP)
    daemon.wait_for(lambda: "reload refused" in daemon.log(), what="the refused reload")
    assert "broken" in daemon.log()
    daemon.drop({"type": "malware", "file_path": "/tmp/a"})
    daemon.drop({"type": "pua", "file_path": "/tmp/b"})
    daemon.wait_for(lambda: daemon.count("SELECT count(*) FROM detections WHERE state != 'queued'") == 2,
                    what="both detections handled")
    assert [tuple(r) for r in daemon.query("SELECT workflow_id, status FROM runs")] == [("notify5", "completed")]
    assert daemon.count("SELECT count(*) FROM detections WHERE state = 'no_match'") == 1  # "extra" not loaded

    (daemon.workflows_dir / "broken.yaml").unlink()
    daemon.signal(signal.SIGHUP)
    # The reload reads and checks the files off the event loop: a detection that comes before it is done is
    # matched against the old set (under load it did, and found no workflow).
    daemon.wait_for(lambda: _workflows(daemon) == 2, what="the reload")
    daemon.drop({"type": "pua", "file_path": "/tmp/c"})
    daemon.wait_for(lambda: daemon.count("SELECT count(*) FROM runs WHERE workflow_id = 'extra'") == 1,
                    what="the reloaded workflow's run")


def test_sigterm_lets_running_runs_finish(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, workflows={"slow": slow_workflow(1)}, scripts={"slow.sh": SLOW_SCRIPT},
                       config_overrides={"engine": {"shutdown_grace": 60.0}}) as d:
        for i in range(3):
            d.drop({"type": "malware", "file_path": f"/tmp/s{i}"})
        d.wait_for(lambda: d.count("SELECT count(*) FROM steps WHERE step_id = 'wait' AND status = 'running'") == 3,
                   what="three scripts running")
        d.signal(signal.SIGTERM)
        d.wait_notify("STOPPING=1", 30)
        assert d.stop() == 0
        assert [r[0] for r in d.query("SELECT status FROM runs")] == ["completed"] * 3


def test_sigterm_interrupts_runs_that_outlive_the_grace_period(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, workflows={"slow": slow_workflow(5)}, scripts={"slow.sh": SLOW_SCRIPT},
                       config_overrides={"engine": {"shutdown_grace": 0.2}}) as d:
        d.drop({"type": "malware", "file_path": "/tmp/s"})
        d.wait_for(lambda: d.count("SELECT count(*) FROM steps WHERE step_id = 'wait' AND status = 'running'") == 1,
                   what="the script running")
        assert d.stop() == 0
        assert [r[0] for r in d.query("SELECT status FROM runs")] == ["interrupted"]
        # Not a crash: the daemon knows the run was stopped, so a restart does not resume it.
        d.start()
        assert d.count("SELECT count(*) FROM runs WHERE status = 'running'") == 0


def test_files_left_in_new_by_a_stop_are_processed_on_the_next_start(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, workflows={"notify5": notify_workflow()})
    with d:
        d.drop({"type": "malware", "file_path": "/tmp/1"})
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'completed'") == 1, what="run 1")
    d.drop({"type": "malware", "file_path": "/tmp/2"})  # while stopped
    with d:
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'completed'") == 2, what="run 2")


def test_the_dedup_window_survives_a_restart(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, workflows={"notify5": notify_workflow()})
    detection = {"type": "malware", "file_path": "/tmp/same", "threat_name": "T"}
    with d:
        d.drop(detection)
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'completed'") == 1, what="run 1")
    with d:
        d.drop(detection)
        d.wait_for(lambda: d.count("SELECT count(*) FROM detections WHERE state != 'queued'") == 2, what="both")
        assert sorted(r[0] for r in d.query("SELECT state FROM detections")) == ["duplicate", "matched"]


def test_status_lines_follow_the_work(daemon: DaemonProcess) -> None:
    daemon.drop({"type": "malware", "file_path": "/tmp/st"})
    daemon.wait_for(lambda: daemon.count("SELECT count(*) FROM runs WHERE status = 'completed'") == 1, what="run")
    # A STATUS= datagram of its own (not the one that came with READY=1), ending idle again.
    daemon.wait_notify_message(lambda m: m == "STATUS=running: 0 active runs, 0 queued, 1 workflows", 10)


def test_sigterm_in_a_burst_leaves_no_detection_behind(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, workflows={"notify5": notify_workflow()},
                      config_overrides={"logging": {"level": "warning"}})
    with d:
        for i in range(400):
            d.drop({"type": "malware", "file_path": f"/tmp/t{i}"})
        d.wait_for(lambda: d.count("SELECT count(*) FROM detections") > 0, what="the burst under way")
        assert d.stop() == 0
        # Whatever was committed left cur/; the rest is still in new/ for the next start.
        committed = d.count("SELECT count(*) FROM detections")
        assert d.spool_files("cur") == []
        assert committed + len(d.spool_files("new")) == 400
    with d:
        d.wait_for(lambda: d.count("SELECT count(*) FROM detections WHERE state = 'matched'") == 400,
                   timeout=120, what="all 400 after the restart")
        assert d.count("SELECT count(*) FROM runs") == 400
