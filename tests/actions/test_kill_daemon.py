"""kill_process through the running daemon: a detection dropped into the spool, the run read back with sddctl.

The control: the shipped critical_threat_response stops the process running the detected file (as another
user, calling itself `sshd`) and leaves alone the process the detection names. The attacks: a detection
whose workflow trusts its process_id, naming a thread of the daemon, the daemon itself or its parent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from tests.support.daemon import DaemonProcess

from .procs import NOBODY, Procs, needs_other_user
from .test_kill import SLEEP, malware

REPO = Path(__file__).resolve().parents[2]
SDDCTL = Path(sys.executable).parent / "sddctl"
TRUSTING = """workflow_id: trusting
trigger: {type: edr}
steps:
  - step_id: kill
    action: kill_process
    params:
      process_id: "{{ detection.process_id }}"
      process_start_time: "{{ detection.process_start_time }}"
      trust_process_id: true
"""
CLAIMED = """workflow_id: claimed
trigger: {type: claim}
steps:
  - step_id: kill
    action: kill_process
    params: {process_id: "{{ detection.process_id }}"}
"""


def sddctl(d: DaemonProcess, *args: str) -> Any:
    out = subprocess.run([str(SDDCTL), "--socket", str(d.socket), *args, "--json"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr + d.log()
    return json.loads(out.stdout)


def finished_runs(d: DaemonProcess, n: int) -> list[Any]:
    d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status NOT IN ('pending', 'running')") >= n,
               what=f"{n} finished run(s)")
    return [sddctl(d, "show", r[0]) for r in d.query("SELECT run_id FROM runs ORDER BY started_at")]


@needs_other_user
def test_the_shipped_template_kills_the_file_s_process_not_the_claimed_one(
        tmp_path: Path, area: Path, procs: Procs) -> None:
    bad = malware(area, "sshd")
    runner = procs.run([str(bad), "300"], user=NOBODY, exe=bad)
    claimed = procs.run([SLEEP, "300"], user=NOBODY, exe=Path(SLEEP))
    template = (REPO / "templates" / "critical_threat_response.yaml").read_text()
    with DaemonProcess(tmp_path, workflows={"critical_threat_response": template},
                       config_overrides={"actions": {"allowed_roots": [str(area)]}}) as d:
        d.drop({"type": "malware", "severity": "critical", "file_path": str(bad), "threat_name": "Test.Sshd",
                "process_id": claimed.pid, "process_start_time": psutil.Process(claimed.pid).create_time()})
        [run] = finished_runs(d, 1)
        steps = {s["step_id"]: s for s in run["steps"]}
        assert steps["quarantine"]["status"] == "completed" and steps["kill"]["status"] == "completed", run
        kill = steps["kill"]["result"]
        assert kill["terminated"] == [runner.pid] and kill["evidence"]["source"] == "vault"
        assert kill["processes"][0]["exe"] == f"{bad} (deleted)" and kill["processes"][0]["uid"] == NOBODY
        assert runner.wait(timeout=10) == -signal.SIGTERM
        assert claimed.poll() is None and not bad.exists()
        [item] = sddctl(d, "quarantine", "list")["items"]
        assert item["original_path"] == str(bad)


def test_a_trusted_process_id_never_reaches_the_daemon_its_threads_or_its_parent(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, workflows={"trusting": TRUSTING}) as d:
        daemon = psutil.Process(d.pid)
        tids = sorted(t.id for t in daemon.threads() if t.id != d.pid)
        assert tids, "the daemon runs threads (intake, store writer)"
        started = daemon.create_time()
        victims = [(tids[0], "is a thread of sdd itself, not a process"), (d.pid, "is sdd itself"),
                   (os.getpid(), "is an ancestor of sdd")]
        for pid, _ in victims:
            proc_start = started if pid != os.getpid() else psutil.Process(pid).create_time()
            d.drop({"type": "edr", "process_id": pid, "process_start_time": proc_start})
        runs = finished_runs(d, len(victims))
        errors = sorted(r["steps"][0]["error"] for r in runs)
        for pid, reason in victims:
            assert any(f"{pid} {reason}" in e or f"pid {pid} {reason}" in e for e in errors), (errors, d.log())
        assert all(r["status"] == "failed" for r in runs)
        assert d.proc is not None and d.proc.poll() is None
        assert tids[0] in [t.id for t in daemon.threads()]
        assert psutil.Process(d.pid).status() != psutil.STATUS_STOPPED
        assert sddctl(d, "status")["state"] == "running"


def test_a_claimed_process_id_with_no_link_is_refused_through_the_daemon(
        tmp_path: Path, area: Path, procs: Procs) -> None:
    bad = malware(area)
    clean = procs.run([SLEEP, "300"], exe=Path(SLEEP))
    linked = procs.run([str(bad), "300"], exe=bad)
    with DaemonProcess(tmp_path, workflows={"claimed": CLAIMED},
                       config_overrides={"actions": {"allowed_roots": [str(area)]}}) as d:
        d.drop({"type": "claim", "file_path": str(bad), "threat_name": "first", "process_id": clean.pid,
                "process_start_time": psutil.Process(clean.pid).create_time()})
        [refused] = finished_runs(d, 1)
        assert refused["status"] == "failed" and "neither executes, holds open nor maps" in refused["steps"][0]["error"]
        assert clean.poll() is None
        d.drop({"type": "claim", "file_path": str(bad), "threat_name": "second", "process_id": linked.pid})
        runs = finished_runs(d, 2)
        [done] = [r for r in runs if r["status"] == "completed"]
        assert done["steps"][0]["result"]["terminated"] == [linked.pid]
        assert linked.wait(timeout=10) == -signal.SIGTERM and clean.poll() is None
