"""`sdd-ingest --format falco`: alerts as Falco writes them (userspace/engine/formats.cpp, json_output), the
contract's mapping, and hostile lines — truncated JSON, a 10 MB line, non-UTF-8, wrong types."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from sdd_client.ingest.falco import FalcoAdapter, iso_epoch
from sdd_client.ingest.outcome import Detection, Rejected

from tests.ingest.conftest import SDD_INGEST, run_ingest, spool_detections


def alert(**overrides: Any) -> dict[str, Any]:
    """A Falco 0.3x alert with every optional property on, as program_output receives it."""
    event: dict[str, Any] = {
        "hostname": "web-1",
        "output": "10:20:05.408091526: Notice A shell was spawned in a container with an attached terminal "
                  "(evt_type=execve user=root user_uid=0 process=bash proc_exepath=/usr/bin/bash "
                  "parent=runc command=bash container_id=8a3b2c1d9e0f)",
        "priority": "Notice",
        "rule": "Terminal shell in container",
        "source": "syscall",
        "tags": ["T1059", "container", "maturity_stable", "mitre_execution", "shell"],
        "time": "2026-11-25T10:20:05.408091526Z",
        "output_fields": {
            "container.id": "8a3b2c1d9e0f", "container.image.repository": "nginx", "evt.time": 1795602005408091526,
            "evt.type": "execve", "fd.name": None, "proc.cmdline": "bash", "proc.exepath": "/usr/bin/bash",
            "proc.pid": 4242, "proc.pname": "runc", "user.name": "root", "user.uid": 0,
        },
    }
    for key, value in overrides.items():
        if key == "fields":
            event["output_fields"].update(value)
        else:
            event[key] = value
    return event


def line(event: Any) -> bytes:
    return json.dumps(event).encode() + b"\n"


def mapped(event: Any) -> Detection:
    [out] = FalcoAdapter(verify_processes=False).feed(1, json.dumps(event).encode())
    assert isinstance(out, Detection), getattr(out, "reason", out)
    return out


@pytest.mark.parametrize("priority, severity", [
    ("Emergency", "critical"), ("Alert", "critical"), ("Critical", "critical"), ("Error", "high"),
    ("Warning", "medium"), ("Notice", "low"), ("Informational", "low"), ("Info", "low"), ("Debug", "low"),
    ("WARNING", "medium"), ("something else", "low")])
def test_priority_becomes_severity(priority: str, severity: str) -> None:
    assert mapped(alert(priority=priority)).detection["severity"] == severity


def test_the_contract_mapping() -> None:
    event = alert(fields={"fd.name": "/tmp/payload.bin"})
    d = mapped(event).detection
    assert {k: v for k, v in d.items() if k not in ("id", "falco")} == {
        "type": "falco", "source": "falco", "threat_name": "Terminal shell in container", "severity": "low",
        "detected_at": "2026-11-25T10:20:05.408091526Z", "host": "web-1", "process_id": 4242,
        "process_exe": "/usr/bin/bash", "file_path": "/tmp/payload.bin", "user": "root",
        "container_id": "8a3b2c1d9e0f"}
    assert d["falco"] == event  # the original alert, whole


def test_the_id_is_stable_and_derived_from_time_host_rule_and_pid() -> None:
    a = mapped(alert()).detection["id"]
    assert a == mapped(alert(output="other text", priority="Critical")).detection["id"]  # a replay
    for other in (alert(time="2026-11-25T10:20:05.408091527Z"), alert(hostname="web-2"), alert(rule="Other"),
                  alert(fields={"proc.pid": 4243})):
        assert mapped(other).detection["id"] != a
    assert a.startswith("falco:") and len(a) == 38


def test_an_sdd_tag_names_the_detection_type() -> None:
    assert mapped(alert(tags=["container", "sdd:malware"])).detection["type"] == "malware"
    out = mapped(alert(tags=["sdd:bad type!"]))
    assert out.detection["type"] == "falco" and "does not name a detection type" in out.warnings[0]


def test_fd_name_is_a_file_path_only_when_it_is_an_absolute_path() -> None:
    assert "file_path" not in mapped(alert(fields={"fd.name": "10.0.0.1:4444->10.0.0.2:80"})).detection
    assert "file_path" not in mapped(alert(fields={"fd.name": "relative/x"})).detection
    lossy = mapped(alert(fields={"fd.name": "/tmp/bad-\ufffd-name"}))  # Falco replaces bytes it cannot encode
    assert "file_path" not in lossy.detection and "U+FFFD" in lossy.warnings[0]
    assert "container_id" not in mapped(alert(fields={"container.id": "host"})).detection


@pytest.mark.parametrize("pid", ["4242", 4242.0, True, -1, 0, 2**40, [4242], {"pid": 1}])
def test_a_pid_that_is_not_a_pid_is_not_mapped_and_is_reported(pid: Any) -> None:
    out = mapped(alert(fields={"proc.pid": pid}))
    assert "process_id" not in out.detection and "process_start_time" not in out.detection
    assert any("proc.pid" in w for w in out.warnings) or pid in (-1, 0, 2**40)


@pytest.mark.parametrize("event, reason", [
    ([1, 2], "expected a JSON object"),
    ({"time": "2026-11-25T10:00:00Z"}, "'rule' is missing"),
    ({"rule": "", "time": "2026-11-25T10:00:00Z"}, "'rule' is missing"),
    ({"rule": 5, "time": "2026-11-25T10:00:00Z"}, "'rule' is missing"),
    ({"rule": "r"}, "'time' is missing"),
    ({"rule": "r", "time": 1700000000}, "'time' is missing"),
])
def test_lines_that_are_not_falco_alerts_are_rejected(event: Any, reason: str) -> None:
    [out] = FalcoAdapter(verify_processes=False).feed(7, json.dumps(event).encode())
    assert isinstance(out, Rejected) and reason in out.reason and out.lines == (7,)


def test_wrong_types_of_optional_properties_degrade_to_warnings() -> None:
    out = mapped(alert(priority=3, tags="shell", hostname=["h"], output_fields="pid=1"))
    assert out.detection["severity"] == "low" and "host" not in out.detection
    assert len(out.warnings) == 4


def test_iso_times() -> None:
    assert iso_epoch("1970-01-01T00:00:00Z") == 0
    assert iso_epoch("2026-11-25T10:20:05.5Z") == pytest.approx(1795602005.5)
    assert iso_epoch("2026-11-25T11:20:05+01:00") == 1795602005
    assert iso_epoch("2000-02-29T00:00:00Z") == 951782400
    assert iso_epoch("yesterday") is None and iso_epoch("2026-13-01T00:00:00Z") is None


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_process_start_time_only_for_the_process_falco_saw() -> None:
    p = _sleeper()
    try:
        proc = psutil.Process(p.pid)
        started = proc.create_time()
        exe = proc.exe()
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime(time.time() + 1))
        adapter = FalcoAdapter()
        same = adapter.map(1, alert(time=now, fields={"proc.pid": p.pid, "proc.exepath": exe,
                                                       "proc.pid.ts": int(started * 1e9)}))
        assert isinstance(same, Detection)
        assert same.detection["process_start_time"] == pytest.approx(started, abs=0.005)  # psutil's value
        # An alert from before this process existed: the pid was someone else's then.
        before = adapter.map(1, alert(time="2020-01-01T00:00:00Z", fields={"proc.pid": p.pid}))
        assert isinstance(before, Detection) and "process_start_time" not in before.detection
        assert "not the one Falco saw" in before.warnings[0]
        # Falco saw another executable under this pid, or another start time.
        for fields in ({"proc.pid": p.pid, "proc.exepath": "/usr/bin/other"},
                       {"proc.pid": p.pid, "proc.pid.ts": int((started - 30) * 1e9)}):
            other = adapter.map(1, alert(time=now, fields=fields))
            assert isinstance(other, Detection) and "process_start_time" not in other.detection
    finally:
        p.kill()
        p.wait()
    gone = FalcoAdapter().map(1, alert(time=now, fields={"proc.pid": p.pid}))
    assert isinstance(gone, Detection) and "process_start_time" not in gone.detection
    assert gone.detection["process_id"] == p.pid


def test_a_stream_of_good_and_hostile_lines(spool: Path) -> None:
    good = [alert(rule=f"Rule {i}", fields={"proc.pid": 100000 + i}) for i in range(5)]
    data = b"".join([
        line(good[0]),
        b'{"hostname": "web-1", "rule": "Truncat',  # truncated JSON: cut off mid-string
        b"\n",
        line(good[1]),
        b'{"rule": "' + b"x" * (10 * 1024 * 1024) + b'"}\n',  # a 10 MB line
        line(good[2]),
        b'{"rule": "caf\xe9", "time": "2026-11-25T10:00:00Z"}\n',  # Latin-1, not UTF-8
        line(alert(fields={"proc.pid": "4242"})),  # proc.pid as a string: written, pid not mapped
        line(good[3]),
        b"\n",
        line([1, 2]),
        line(good[4]).rstrip(b"\n"),  # the last line without its newline
    ])
    r = run_ingest("falco", data, spool)
    assert r.returncode == 0, r.stderr
    found = spool_detections(spool)
    assert [d["threat_name"] for d in found] == ["Rule 0", "Rule 1", "Rule 2", "Terminal shell in container",
                                                 "Rule 3", "Rule 4"]
    assert "process_id" not in found[3]
    errors = r.errors[:-1]
    assert any(e.startswith("sdd-ingest: falco: line 2: invalid JSON") for e in errors), errors
    assert any(e.startswith("sdd-ingest: falco: line 4: longer than 1048576 bytes") for e in errors), errors
    assert any(e.startswith("sdd-ingest: falco: line 6: not valid UTF-8") for e in errors), errors
    assert any(e.startswith("sdd-ingest: falco: line 7: warning: output_fields.proc.pid is a string") for e in errors)
    assert any(e.startswith("sdd-ingest: falco: line 9: invalid JSON") for e in errors), errors  # the blank line
    assert any(e.startswith("sdd-ingest: falco: line 10: not a Falco alert") for e in errors), errors
    assert r.summary == "sdd-ingest: falco: 11 lines: 6 detections written, 5 rejected"
    assert not list((spool / "tmp").iterdir())


def test_nothing_written_exits_1_and_an_empty_stream_exits_0(spool: Path, tmp_path: Path) -> None:
    r = run_ingest("falco", b"not json\n[]\n", spool)
    assert r.returncode == 1 and r.summary.endswith("0 detections written, 2 rejected")
    r = run_ingest("falco", b"", spool)
    assert r.returncode == 0 and r.summary == "sdd-ingest: falco: 0 lines: 0 detections written"
    r = run_ingest("falco", line(alert()), tmp_path / "no-spool")
    assert r.returncode == 1 and "does not exist" in r.stderr


def test_a_detection_too_big_for_the_spool_is_rejected_not_truncated(spool: Path) -> None:
    event = alert(output="o" * 950_000, rule="r" * 60_000)  # the line fits, the rule copied beside it does not
    assert len(line(event)) < 1024 * 1024
    r = run_ingest("falco", line(event), spool)
    assert r.returncode == 1 and "the spool accepts at most 1048576" in r.stderr
    assert spool_detections(spool) == []


def _wait_for_files(spool: Path, n: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(os.listdir(spool / "new")) < n:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, f"no {n} detections in the spool"
        time.sleep(0.01)  # poll interval of a deadline-bounded wait on the spool


def test_keep_alive_each_alert_is_in_the_spool_before_the_next_arrives(spool: Path) -> None:
    # Falco's program_output with keep_alive: one process, one alert at a time, the pipe never closed.
    proc = subprocess.Popen([SDD_INGEST, "--format", "falco", "--spool", str(spool)], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        for i in range(3):
            proc.stdin.write(line(alert(rule=f"R{i}")))
            proc.stdin.flush()
            _wait_for_files(spool, i + 1, proc)
        proc.send_signal(signal.SIGTERM)  # Falco restarting: what was read is written, the summary printed
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and err.decode().endswith("3 lines: 3 detections written\n")
    assert [d["threat_name"] for d in spool_detections(spool)] == ["R0", "R1", "R2"]
