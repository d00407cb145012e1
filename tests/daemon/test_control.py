"""The daemon's Control driven through the real socket API (sdd-client), plus exclusions, schedules,
back-pressure and the systemd watchdog, each on a live daemon."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.workflows import notify_workflow

client = pytest.importorskip("sdd_client.client")


def completed(d: DaemonProcess) -> int:
    return d.count("SELECT count(*) FROM runs WHERE status = 'completed'")


def test_status_start_submit_reload_through_the_api(daemon: DaemonProcess) -> None:
    with client.Client(daemon.socket) as c:
        status = c.call("status")
        assert status["state"] == "running" and status["workflows"] == 1 and status["pid"] == daemon.pid
        manual = notify_workflow("manual", 2).replace("trigger:\n  type: malware\n", "").replace(
            "detection.file_path", "context.why")
        daemon.write_workflow("manual", manual)
        assert c.call("reload")["ok"] is True
        started = c.call("runs.start", workflow_id="manual", context={"why": "test"})
        daemon.wait_for(lambda: completed(daemon) == 1, what="the API-started run")
        row = daemon.query("SELECT trigger, detection_id FROM runs WHERE run_id = ?", (started["run_id"],))[0]
        assert tuple(row) == ("api", None)
        sub = c.call("detections.submit", detection={"type": "malware", "file_path": "/tmp/api"})
        daemon.wait_for(lambda: completed(daemon) == 2, what="the submitted detection's run")
        row = daemon.query("SELECT detection_id FROM runs WHERE trigger = 'detection'")[0]
        assert str(row[0]) == sub["detection_id"]
        with pytest.raises(Exception, match="not_found|no workflow"):
            c.call("runs.start", workflow_id="nope")
    # Calls made by someone are audited with their uid.
    assert daemon.count("SELECT count(*) FROM audit WHERE action = 'runs.start'") >= 1


def test_excluded_paths_start_nothing(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, workflows={"notify5": notify_workflow()})
    from sdd.store import Store

    async def exclude() -> None:
        store = Store.open(d.database)
        await store.add_exclusion("path", "/srv/trusted", "known good", "test")
        store.close()

    asyncio.run(exclude())
    with d:
        d.drop({"type": "malware", "file_path": "/srv/trusted/tool.exe"})
        d.drop({"type": "malware", "file_path": "/srv/other/tool.exe"})
        d.wait_for(lambda: d.count("SELECT count(*) FROM detections WHERE state != 'queued'") == 2, what="both")
        assert dict(d.query("SELECT file_path, state FROM detections")) == {
            "/srv/trusted/tool.exe": "excluded", "/srv/other/tool.exe": "matched"}


def test_a_scheduled_workflow_runs_on_its_own(tmp_path: Path) -> None:
    sched = notify_workflow("tick", 1).replace("trigger:\n  type: malware\n", "trigger:\n  schedule: {every: 1}\n")
    sched = sched.replace("{{ detection.file_path }}", "tick")
    with DaemonProcess(tmp_path, workflows={"tick": sched}) as d:
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE trigger = 'schedule' AND status = 'completed'")
                   >= 2, timeout=30, what="two scheduled runs")


def test_a_schedule_of_nan_seconds_is_not_loaded_and_the_daemon_answers(tmp_path: Path) -> None:
    # It loaded once, and the scheduler's loop then neither slept nor yielded: no call was answered again.
    tick = notify_workflow("tick", 1).replace("trigger:\n  type: malware\n", "trigger:\n  schedule: {every: .nan}\n")
    with DaemonProcess(tmp_path, workflows={"tick": tick, "on_malware": notify_workflow("on_malware", 1)}) as d:
        with client.Client(d.socket, timeout=10) as c:
            assert [w["workflow_id"] for w in c.call("workflows.list")["items"]] == ["on_malware"]
        d.drop({"type": "malware", "file_path": "/tmp/still-served"})
        d.wait_for(lambda: completed(d) == 1, what="the valid workflow's run")
        assert d.count("SELECT count(*) FROM runs WHERE trigger = 'schedule'") == 0
        assert "tick.yaml:3:21: trigger.schedule.every must be a finite number, got .nan" in d.log()


def test_back_pressure_keeps_the_backlog_in_the_spool_and_database(tmp_path: Path) -> None:
    slow = notify_workflow("slow", 1).replace("steps:\n", "steps:\n  - step_id: pause\n    action: run_script\n"
                                              "    params: {script: pause.sh}\n")
    with DaemonProcess(tmp_path, workflows={"slow": slow}, scripts={"pause.sh": "#!/bin/sh\nsleep 0.02\n"},
                       config_overrides={"intake": {"max_queued": 10}, "engine": {"max_concurrent_runs": 2}}) as d:
        for i in range(150):
            d.drop({"type": "malware", "file_path": f"/tmp/b{i}"})
        most_queued, seen_waiting_in_new = 0, False

        def done() -> bool:
            nonlocal most_queued, seen_waiting_in_new
            most_queued = max(most_queued, d.count("SELECT count(*) FROM detections WHERE state = 'queued'"))
            seen_waiting_in_new = seen_waiting_in_new or len(d.spool_files("new")) > 50
            return completed(d) == 150

        d.wait_for(done, timeout=120, what="150 runs")
        assert most_queued <= 2 * 10  # queued plus one claimed batch, never the whole spool
        assert seen_waiting_in_new    # claiming paused: the rest waited as files


def test_watchdog_pings_when_asked(make_daemon) -> None:  # type: ignore[no-untyped-def]
    d = make_daemon(env={"WATCHDOG_USEC": "400000"})
    d.wait_notify("WATCHDOG=1", 10)


def test_an_exclusion_added_by_a_workflow_applies_to_the_next_detection(daemon: DaemonProcess) -> None:
    daemon.write_workflow("fp", "workflow_id: fp\nsteps:\n  - step_id: exclude\n    action: add_exclusion\n"
                                "    params: {path: /srv/fp, reason: false positive}\n")
    with client.Client(daemon.socket) as c:
        assert c.call("reload")["ok"] is True
        daemon.drop({"type": "malware", "file_path": "/srv/fp/a.exe"})
        daemon.wait_for(lambda: daemon.count("SELECT count(*) FROM detections WHERE state = 'matched'") == 1,
                        what="the first detection, before the exclusion")
        c.call("runs.start", workflow_id="fp")
        daemon.wait_for(lambda: daemon.count("SELECT count(*) FROM runs WHERE workflow_id = 'fp' "
                                             "AND status = 'completed'") == 1, what="the exclusion run")
    daemon.drop({"type": "malware", "file_path": "/srv/fp/b.exe"})
    daemon.wait_for(lambda: daemon.count("SELECT count(*) FROM detections WHERE state = 'excluded'") == 1,
                    what="the excluded detection")


def test_quarantine_restore_through_the_control(tmp_path: Path) -> None:
    victim_dir = tmp_path / "files"
    victim_dir.mkdir()
    victim = victim_dir / "invoice.exe"
    victim.write_bytes(b"not really malware")
    wf = ("workflow_id: contain\ntrigger: {type: malware}\nsteps:\n  - step_id: q\n    action: quarantine_file\n"
          "    params: {file_path: \"{{ detection.file_path }}\"}\n")
    with DaemonProcess(tmp_path, workflows={"contain": wf},
                       config_overrides={"actions": {"allowed_roots": [str(victim_dir)]}}) as d:
        d.drop({"type": "malware", "file_path": str(victim)})
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'completed'") == 1, what="quarantine")
        assert not victim.exists()
        with d.client() as c:
            items = c.call("quarantine.list")["items"]
            assert len(items) == 1
            qid = items[0].get("id") or items[0].get("quarantine_id")
            result = c.call("quarantine.restore", id=qid)
        assert result["restored_path"] == str(victim)
        assert victim.read_bytes() == b"not really malware"
