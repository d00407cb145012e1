"""What sdd records is what happened (issue 11, "Truth"), through the real daemon and sddctl: the incident
report of a running daemon lists what was quarantined and killed; a dry run runs and records nothing; a run
against a sample detection acts on that detection; a desktop notification with no bus says it was not
delivered."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from sdd_client.client import Client

from tests.api.live import sddctl
from tests.support.daemon import DaemonProcess

# Kill first (while the file is still in place), then quarantine, then the report: what a containment does.
CONTAIN = """workflow_id: contain_report
trigger: {type: malware}
steps:
  - step_id: kill
    action: kill_process
    params: {process_id: "{{ detection.process_id }}", timeout: 5}
  - step_id: quarantine
    action: quarantine_file
    params: {file_path: "{{ detection.file_path }}"}
  - step_id: report
    action: generate_report
    params: {report_type: incident, format: both}
"""

QUARANTINE = """workflow_id: quarantine_only
name: Quarantine a file
steps:
  - step_id: quarantine
    action: quarantine_file
    params: {file_path: "{{ detection.file_path }}"}
  - step_id: note
    action: send_notification
    params: {message: "quarantined {{ steps.quarantine.result.quarantine_id }}", channel: log}
"""

DESKTOP = """workflow_id: desktop
steps:
  - step_id: tell
    action: send_notification
    params: {channel: desktop, title: hello, message: world}
    on_failure: continue
  - step_id: quiet
    action: send_notification
    params: {channel: log, message: "below the log level"}
"""


def _victim(directory: Path) -> tuple[Path, subprocess.Popen[bytes]]:
    """A copy of sleep(1) in an allowed root, running as nobody: the detected file and the process that
    executes it."""
    directory.mkdir(mode=0o755, exist_ok=True)
    os.chmod(directory, 0o755)
    exe = directory / "invoice.exe"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", exe)
    os.chmod(exe, 0o755)
    if os.geteuid() == 0 and shutil.which("setpriv"):
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(exe), "600"]
    else:
        argv = [str(exe), "600"]
    proc = subprocess.Popen(argv)
    deadline = time.monotonic() + 10
    while os.readlink(f"/proc/{proc.pid}/exe") != str(exe):  # setpriv has exec'd the copy
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return exe, proc


def _start_time(pid: int) -> float:
    import psutil

    return psutil.Process(pid).create_time()


def test_the_daemons_incident_report_lists_the_detection_steps_quarantine_and_kill(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, workflows={"contain_report": CONTAIN}) as d:
        exe, proc = _victim(d.root / "files")
        digest = hashlib.sha256(exe.read_bytes()).hexdigest()
        try:
            d.drop({"id": "edr-42", "type": "malware", "file_path": str(exe), "process_id": proc.pid,
                    "process_start_time": _start_time(proc.pid), "threat_name": "Test.Sleeper"})
            row = d.wait_for(lambda: d.query("SELECT run_id, status FROM runs WHERE status IN "
                                             "('completed', 'failed', 'rolled_back')"), what="the run")[0]
            assert row["status"] == "completed", d.log()
            assert proc.wait(10) is not None  # really dead
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert not exe.exists()
        reports = sorted((d.state / "reports").glob("*.json"))
        assert len(reports) == 1
        report = json.loads(reports[0].read_text())
        assert report["detection"]["id"] == "edr-42" and report["detection"]["file_path"] == str(exe)
        assert report["run"]["detection_id"] == "1" and report["run"]["external_id"] == "edr-42"
        steps = {s["step_id"]: s for s in report["steps"]}
        assert steps["kill"]["status"] == "completed" and steps["quarantine"]["status"] == "completed"
        assert steps["report"]["status"] == "running"  # every step so far: the report is being written
        for name in ("kill", "quarantine"):
            assert steps[name]["duration"] >= 0 and steps[name]["summary"]
        (entry,) = report["quarantine"]
        assert entry["sha256"] == digest and entry["original_path"] == str(exe)
        vault = d.query("SELECT id, sha256 FROM quarantine")
        assert [(r["id"], r["sha256"]) for r in vault] == [(entry["quarantine_id"], digest)]
        assert report["hashes"] == [digest]
        assert proc.pid in {k["pid"] for k in report["killed"]}
        html = reports[0].with_suffix(".html").read_text()
        assert entry["quarantine_id"] in html and f"<code>{proc.pid}</code>" in html
        assert "<li>nothing</li>" not in html  # neither "Quarantined: nothing" nor "Killed: nothing"


def test_a_dry_run_runs_nothing_and_leaves_no_run_in_history_or_stats(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, workflows={"quarantine_only": QUARANTINE}) as d:
        target = d.root / "keep.txt"
        target.write_text("not to be touched")
        sample = tmp_path / "sample.json"
        sample.write_text(json.dumps({"type": "malware", "file_path": str(target)}))
        r = sddctl(d, "run", "quarantine_only", "--dry-run", "--detection", str(sample))
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == "Dry run of quarantine_only: nothing was run or recorded."
        assert lines[1].split() == ["STEP", "RUNS", "ACTION", "WHY"]
        assert lines[2].split()[:3] == ["quarantine", "yes", "quarantine_file"]
        # Without a detection the plan cannot render the path: said, not recorded as a failure.
        r = sddctl(d, "--json", "run", "quarantine_only", "--dry-run", "--wait")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["dry_run"] is True and doc["run_id"] is None and len(doc["plan"]) == 2
        with Client(d.socket) as c:
            c.call("runs.start", workflow_id="quarantine_only", dry_run=True)
            assert c.call("runs.list")["items"] == []
            assert c.call("runs.stats")["items"] == []
            assert c.call("detections.list")["items"] == []  # the sample of a dry run is not recorded
        assert target.read_text() == "not to be touched"
        assert d.count("SELECT count(*) FROM runs") == 0 and d.count("SELECT count(*) FROM audit") == 0
        assert "No runs yet." in sddctl(d, "stats").stdout


def test_run_against_a_sample_detection_acts_on_it_and_records_it(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, workflows={"quarantine_only": QUARANTINE}) as d:
        target = d.root / "sample.exe"
        target.write_bytes(b"sample")
        sample = tmp_path / "sample.json"
        sample.write_text(json.dumps({"id": "try-1", "type": "malware", "file_path": str(target)}))
        r = sddctl(d, "run", "quarantine_only", "--detection", str(sample), "--wait")
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.splitlines()[0].endswith("of quarantine_only for detection 1")
        assert "completed" in r.stdout.splitlines()[-1]
        assert not target.exists() and d.count("SELECT count(*) FROM quarantine") == 1
        (run,) = d.query("SELECT run_id, trigger, detection_id FROM runs")
        assert run["trigger"] == "api" and run["detection_id"] == 1
        det = d.query("SELECT state, external_id, note FROM detections")[0]
        # A sample: recorded for the run's history, but it claims no producer id (so it dedups nothing).
        assert det["state"] == "matched" and det["external_id"] is None and "sample" in det["note"]
        shown = sddctl(d, "show", run["run_id"]).stdout
        assert "Detection: 1 (producer's id try-1)" in shown
        # The same sample again is not a "duplicate": it is run again.
        target.write_bytes(b"sample")
        assert sddctl(d, "run", "quarantine_only", "--detection", str(sample), "--wait").returncode == 0


@pytest.mark.parametrize("content, reason", [
    ('{"type": "malware", "size": 1e999}', "out of range"),
    ('{"type": "malware", "x": NaN}', "NaN"),
    ('{"file_path": "/tmp/x"}', "type"),
    ('[1, 2]', "expected one JSON object"),
    ('{"type": "malware", "id": {"a": 1}}', "'id'"),
])
def test_a_bad_sample_detection_is_refused_with_its_reason(tmp_path: Path, content: str, reason: str) -> None:
    with DaemonProcess(tmp_path, workflows={"quarantine_only": QUARANTINE}) as d:
        sample = tmp_path / "bad.json"
        sample.write_text(content)
        r = sddctl(d, "run", "quarantine_only", "--detection", str(sample))
        assert r.returncode == 2 and reason in r.stderr, r.stderr
        assert "runs.start" not in r.stderr  # no internal method names
        assert d.count("SELECT count(*) FROM runs") == 0


def test_a_desktop_notification_without_a_bus_is_reported_undelivered(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, workflows={"desktop": DESKTOP}, config_overrides={
            "logging": {"level": "warning"}}) as d:
        r = sddctl(d, "--json", "run", "desktop", "--wait")
        run = json.loads(r.stdout)
        steps = {s["step_id"]: s for s in run["steps"]}
        assert steps["tell"]["status"] == "failed"
        assert 'not delivered: D-Bus is off (dbus.bus = "none")' in steps["tell"]["error"]
        # The log channel below the log level: suppressed by configuration, said so, not a failure.
        quiet = steps["quiet"]
        assert quiet["status"] == "completed" and quiet["result"]["sent"] is False
        assert quiet["result"]["deliveries"] == [] and quiet["result"]["suppressed"] == ["log"]
