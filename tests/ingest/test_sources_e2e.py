"""Each source end to end into a running daemon: events in on standard input, runs completed, outcomes
checked on the host — Falco's stream, a real `yara` scan quarantining what it found, Wazuh's file-integrity
alert quarantined then restored by its undo request, and plain JSON lines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ingest.conftest import run_ingest
from tests.ingest.test_falco import alert
from tests.ingest.test_wazuh import FIM_ALERT, SHELLSHOCK, Execd
from tests.support.daemon import DaemonProcess

RUNS_COMPLETED = "SELECT count(*) FROM runs WHERE status = 'completed'"


def notify(workflow_id: str, trigger_type: str) -> str:
    return f"""workflow_id: {workflow_id}
trigger: {{type: {trigger_type}}}
steps:
  - step_id: note
    action: send_notification
    params: {{message: "{{{{ detection.threat_name }}}} on {{{{ detection.get('host', '-') }}}}", channel: log}}
"""


QUARANTINE = """workflow_id: quarantine_{kind}
trigger: {{type: {kind}}}
steps:
  - step_id: quarantine
    action: quarantine_file
    params: {{file_path: "{{{{ detection.file_path }}}}"}}
"""

RESTORE_ON_UNDO = """workflow_id: wazuh_undo
trigger: {type: undo, when: 'detection.get("source") == "wazuh"'}
steps:
  - step_id: restore
    action: restore_file
    params: {file_path: "{{ detection.file_path }}"}
"""


def test_a_falco_stream_becomes_runs(tmp_path: Path) -> None:
    n = 300
    with DaemonProcess(tmp_path, workflows={"falco_note": notify("falco_note", "falco")}) as d:
        lines = b"".join(json.dumps(alert(rule=f"Rule {i}", time=f"2026-11-25T10:00:{i % 60:02d}.{i:09d}Z",
                                          fields={"proc.pid": 200000 + i})).encode() + b"\n" for i in range(n))
        replay = lines.splitlines(keepends=True)[0]  # the first alert once more: a duplicate, no second run
        r = run_ingest("falco", lines + replay, d.spool)
        assert r.returncode == 0 and r.summary.endswith(f"{n + 1} detections written"), r.stderr
        d.wait_for(lambda: d.count(RUNS_COMPLETED) == n, what=f"{n} completed runs")
        d.wait_for(lambda: d.count("SELECT count(*) FROM detections WHERE state = 'duplicate'") == 1,
                   what="the replayed alert marked duplicate")
        assert d.count("SELECT count(*) FROM runs") == n
        assert d.spool_files("rejected") == []


def test_a_real_yara_scan_is_quarantined(tmp_path: Path) -> None:
    yara = shutil.which("yara")
    if yara is None:
        pytest.skip("yara is not installed")
    with DaemonProcess(tmp_path, workflows={"q": QUARANTINE.format(kind="yara")}) as d:
        infected = d.root / "home" / "bob"
        (infected / "sub dir").mkdir(parents=True)
        rules = tmp_path / "rules.yar"
        rules.write_text('rule Dropper { strings: $a = "SDD-DROPPER" condition: $a }\n')
        bad = [infected / "a.exe", infected / "sub dir" / "b c.exe", infected / "new\nline.exe"]
        for path in bad:
            path.write_bytes(b"..SDD-DROPPER..")
        clean = infected / "clean.txt"
        clean.write_text("fine")
        scan = subprocess.run([yara, "-r", str(rules), str(infected)], capture_output=True, timeout=120, check=True)
        r = run_ingest("yara", scan.stdout, d.spool)
        assert r.returncode == 0 and r.summary.endswith("3 detections written"), r.stderr
        d.wait_for(lambda: d.count(RUNS_COMPLETED) == 3, what="3 quarantines")
        assert [p for p in bad if os.path.lexists(p)] == [] and clean.exists()
        assert len([n for n in os.listdir(d.state / "vault") if n.endswith(".bin")]) == 3


def test_a_wazuh_fim_alert_is_quarantined_and_its_undo_restores_it(tmp_path: Path) -> None:
    workflows = {"q": QUARANTINE.format(kind="wazuh"), "undo": RESTORE_ON_UNDO}
    with DaemonProcess(tmp_path, workflows=workflows) as d:
        dropped = d.root / "home" / "alice" / "dropper.sh"
        dropped.parent.mkdir(parents=True)
        dropped.write_bytes(b"#!/bin/sh\necho pwned\n")
        message = dict(SHELLSHOCK, parameters=dict(SHELLSHOCK["parameters"],
                                                   alert=dict(FIM_ALERT, syscheck=dict(FIM_ALERT["syscheck"],
                                                                                      path=str(dropped)))))
        execd = Execd(d.spool)
        execd.send(message)
        execd.read_keys()
        execd.answer(message, "continue")
        assert execd.finish()[0] == 0
        d.wait_for(lambda: d.count(RUNS_COMPLETED) == 1, what="the quarantine")
        assert not dropped.exists()
        # The stateful timeout expires: execd runs the script again with "delete".
        execd = Execd(d.spool)
        execd.send(dict(message, command="delete"))
        execd.close_input()
        assert execd.finish()[0] == 0
        d.wait_for(lambda: d.count(RUNS_COMPLETED) == 2, what="the restore")
        assert dropped.read_bytes() == b"#!/bin/sh\necho pwned\n"
        [undo] = d.query("SELECT raw FROM detections WHERE type = 'undo'")
        assert json.loads(undo["raw"])["undo_of"] == json.loads(
            d.query("SELECT raw FROM detections WHERE type = 'wazuh'")[0]["raw"])["id"]


def test_json_lines_become_runs_and_bad_lines_are_reported(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, workflows={"m": notify("m", "malware")}) as d:
        good = [{"type": "malware", "threat_name": f"T{i}", "file_path": f"/tmp/f{i}"} for i in range(20)]
        data = b"\n".join(json.dumps(g).encode() for g in good) + b'\n{"type": ""}\n{"no": "type"}\n'
        r = run_ingest("jsonl", data, d.spool)
        assert r.returncode == 0 and r.summary == "sdd-ingest: jsonl: 22 lines: 20 detections written, 2 rejected"
        d.wait_for(lambda: d.count(RUNS_COMPLETED) == 20, what="20 runs")
        assert d.spool_files("rejected") == []  # refused before the spool, with their line numbers
