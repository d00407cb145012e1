"""Each source through the shipped templates into a running daemon: events in on sdd-ingest's standard input,
runs completed, and the outcome checked on the host — in procfs (a process of another user killed through
`trust_process_id`), the vault and the file system (quarantined, restored or kept), and the database (runs,
steps, audit rows). Falco and Wazuh cannot run here: their lines are written from their documented formats
(tests/ingest/test_falco.py, test_wazuh.py) and Wazuh's execd is played by the test; YARA is the real
`yara`, and YARA-X's ndjson lines follow `yr scan --output-format ndjson`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.ingest.conftest import run_ingest
from tests.ingest.test_docs_sources import blocks
from tests.ingest.test_falco import alert
from tests.ingest.test_wazuh import Execd, fim
from tests.support.daemon import DaemonProcess
from tests.support.trusted import trusted_dir

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
SDDCTL = str(Path(sys.executable).parent / "sddctl")


def templates(*names: str) -> dict[str, str]:
    return {name: (TEMPLATES / f"{name}.yaml").read_text() for name in names}


def runs_of(d: DaemonProcess, workflow_id: str, status: str = "completed") -> int:
    return d.count("SELECT count(*) FROM runs WHERE workflow_id = ? AND status = ?", (workflow_id, status))


def step(d: DaemonProcess, workflow_id: str, step_id: str, n: int = 0) -> dict[str, Any]:
    rows = d.query("SELECT s.status, s.result, s.error FROM steps s JOIN runs r ON r.run_id = s.run_id "
                   "WHERE r.workflow_id = ? AND s.step_id = ? AND s.phase = 'run' ORDER BY r.started_at, r.run_id",
                   (workflow_id, step_id))
    row = rows[n]
    return {"status": row["status"], "result": json.loads(row["result"]) if row["result"] else None,
            "error": row["error"]}


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


@pytest.mark.skipif(os.geteuid() != 0, reason="starts and signals another user's process")
def test_falco_alerts_kill_the_process_of_another_user_they_name(tmp_path: Path) -> None:
    sleep = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
    procs = [subprocess.Popen([sleep, "300"], user=65534, group=65534) for _ in range(3)]
    try:
        deadline = time.monotonic() + 30
        while any(psutil.Process(p.pid).uids().real != 65534 for p in procs):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        shell, wrong_start, other_rule = procs
        start_ns = {p.pid: int(psutil.Process(p.pid).create_time() * 1e9) for p in procs}
        when = now_iso()

        def line(p: subprocess.Popen[bytes], rule: str, **fields: Any) -> bytes:
            event = alert(rule=rule, time=when, priority="Critical",
                          fields={"proc.pid": p.pid, "proc.pid.ts": start_ns[p.pid], "proc.exepath": sleep,
                                  "user.name": "nobody", **fields})
            return json.dumps(event).encode() + b"\n"

        stream = (line(shell, "Terminal shell in container")
                  # Falco saw another process under this pid (it started 30 s earlier): not this one.
                  + line(wrong_start, "Drop and execute new binary in container",
                         **{"proc.pid.ts": start_ns[wrong_start.pid] - 30 * 10**9})
                  + line(other_rule, "Read sensitive file untrusted")   # a rule the template does not act on
                  + b'{"rule": "truncated'                               # a broken line is reported, skipped
                  + b"\n" + line(shell, "Terminal shell in container"))  # replayed: a duplicate, no second run
        with DaemonProcess(tmp_path, workflows=templates("falco_response")) as d:
            r = run_ingest("falco", stream, d.spool)
            assert r.returncode == 0 and r.summary == ("sdd-ingest: falco: 5 lines: 4 detections written, "
                                                       "1 rejected"), r.stderr
            assert "line 4: invalid JSON" in r.stderr
            assert f"process {wrong_start.pid} is gone or is not the one Falco saw" in r.stderr
            d.wait_for(lambda: runs_of(d, "falco_response") == 2, what="two falco_response runs")
            d.wait_for(lambda: d.count("SELECT count(*) FROM detections WHERE state = 'duplicate'") == 1,
                       what="the replay marked duplicate")
            assert shell.wait(timeout=10) == -15                        # dead, by SIGTERM
            assert wrong_start.poll() is None and other_rule.poll() is None
            kills = [step(d, "falco_response", "kill", n) for n in range(2)]
            by_status = {k["status"]: k for k in kills}
            assert by_status["completed"]["result"]["terminated"] == [shell.pid]
            assert by_status["completed"]["result"]["processes"][0]["uid"] == 65534
            assert by_status["skipped"]["result"] is None               # no checked start time: not killed
            [audit] = d.query("SELECT target, outcome FROM audit WHERE action = 'kill_process'")
            assert (audit["target"], audit["outcome"]) == (str(shell.pid), "killed")
            reports = sorted((d.state / "reports").glob("*-report-falco.json"))
            assert len(reports) == 2
            logged = [step(d, "falco_response", "log", n)["status"] for n in range(2)]
            assert logged == ["completed", "completed"]
            assert d.count("SELECT count(*) FROM runs") == 2
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def wazuh_add(path: Path, alert_id: str) -> dict[str, Any]:
    message = fim()
    alert_ = message["parameters"]["alert"]
    alert_["id"] = alert_id
    alert_["syscheck"]["path"] = str(path)
    return message


def execd_run(spool: Path, message: dict[str, Any]) -> None:
    """One active response as wazuh-execd runs it: the message, the check_keys handshake for an add, EOF."""
    execd = Execd(spool)
    execd.send(message)
    if message["command"] == "add":
        assert execd.read_keys()["command"] == "check_keys"
        execd.answer(message, "continue")
    else:
        execd.close_input()
    rc, _, err = execd.finish()
    assert rc == 0, err


def test_wazuh_fim_alerts_are_quarantined_and_undone_only_where_nothing_else_vouches(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, workflows=templates("wazuh_fim", "wazuh_undo")) as d:
        home = d.root / "home" / "alice"
        home.mkdir(parents=True)
        files = {name: home / name for name in ("dropper.sh", "also-clamav.sh", "recreated.sh", "forged.sh")}
        for name, path in files.items():
            path.write_bytes(f"#!/bin/sh\necho {name}\n".encode())
        ids = {}
        for i, (name, path) in enumerate(files.items()):
            execd_run(d.spool, wazuh_add(path, f"1795602005.{i}"))
            ids[name] = f"wazuh:001:1795602005.{i}"
        d.wait_for(lambda: runs_of(d, "wazuh_fim") == 4, what="four quarantines")
        assert not any(p.exists() for p in files.values())
        report = step(d, "wazuh_fim", "report")["result"]
        assert Path(report["html_path"]).exists() and len(report["quarantine_ids"]) == 1
        # ClamAV names one of the files too (no workflow runs for it here: its word is enough to keep it).
        d.drop({"type": "malware", "source": "clamav", "file_path": str(files["also-clamav.sh"]),
                "threat_name": "Unix.Trojan.Test"})
        files["recreated.sh"].write_bytes(b"a newer file the user wrote since")
        d.wait_for(lambda: d.count("SELECT count(*) FROM detections WHERE type = 'malware'") >= 1,
                   what="the ClamAV detection recorded")
        # Wazuh's timeout expires for the first three: execd runs the script again with delete.
        for name in ("dropper.sh", "also-clamav.sh", "recreated.sh"):
            execd_run(d.spool, dict(wazuh_add(files[name], ids[name][len("wazuh:001:"):]), command="delete"))
        # A forged undo: a wazuh-looking request for a detection that is not Wazuh's.
        d.drop({"id": "clamav-1", "type": "malware", "source": "clamav", "file_path": str(files["forged.sh"])})
        d.wait_for(lambda: d.count("SELECT count(*) FROM detections WHERE external_id = 'clamav-1'") == 1,
                   what="clamav-1 recorded")
        run_ingest("jsonl", json.dumps({"type": "undo", "source": "wazuh", "undo_of": "clamav-1"}).encode() + b"\n",
                   d.spool)
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE workflow_id = 'wazuh_undo' AND status IN "
                                   "('completed', 'failed')") == 4, what="four undo runs ended")

        assert files["dropper.sh"].read_bytes() == b"#!/bin/sh\necho dropper.sh\n"        # restored
        assert not files["also-clamav.sh"].exists()                                       # kept: ClamAV said so
        assert files["recreated.sh"].read_bytes() == b"a newer file the user wrote since"  # never overwritten
        assert not files["forged.sh"].exists()
        rows = {r["original_path"]: r for r in d.query("SELECT original_path, restored_at FROM quarantine")}
        assert rows[str(files["dropper.sh"])]["restored_at"] is not None
        assert [p for p, r in rows.items() if r["restored_at"] is not None] == [str(files["dropper.sh"])]
        undo = {}
        for n in range(4):
            s = step(d, "wazuh_undo", "restore", n)
            key = (s["result"] or {}).get("undo_of") or s["error"]
            undo[key] = s
        restored = undo[ids["dropper.sh"]]["result"]
        assert [r["original_path"] for r in restored["restored"]] == [str(files["dropper.sh"])]
        kept = undo[ids["also-clamav.sh"]]["result"]
        assert kept["restored"] == [] and "type malware, source clamav) also named this file" in \
            kept["kept"][0]["reason"]
        [conflict] = [s for s in undo.values() if s["status"] == "failed" and "already exists" in (s["error"] or "")]
        assert str(files["recreated.sh"]) in conflict["error"]
        [forged] = [s for s in undo.values() if s["status"] == "failed" and "clamav-1" in (s["error"] or "")]
        assert "from source 'wazuh', detection 'clamav-1' from 'clamav'" in forged["error"]
        [audit] = d.query("SELECT target, outcome FROM audit WHERE action = 'restore_file'")
        assert (audit["target"], audit["outcome"]) == (str(files["dropper.sh"]), "restored")
        undone = d.query("SELECT raw FROM detections WHERE type = 'undo' AND json_extract(raw, '$.source') = "
                         "'wazuh' AND json_extract(raw, '$.undo_of') = ?", (ids["dropper.sh"],))
        assert len(undone) == 1


def yara_rules_dir() -> Path:
    rules = trusted_dir("yara")
    (rules / "droppers.yar").write_text('rule Dropper : malware { meta: severity = "critical" strings: '
                                        '$a = "SDD-DROPPER" condition: $a }\n')
    os.chmod(rules / "droppers.yar", 0o644)
    return rules


def infected_tree(base: Path) -> tuple[list[Path], Path]:
    (base / "sub dir").mkdir(parents=True)
    bad = [base / "a.exe", base / "sub dir" / "b c.exe", base / "new\nline.exe", base / "x\nDropper clean.txt"]
    for path in bad:
        path.write_bytes(b"..SDD-DROPPER..")
    clean = base / "clean.txt"
    clean.write_text("fine")
    return bad, clean


@pytest.mark.skipif(shutil.which("yara") is None, reason="Debian's yara is not installed")
def test_yara_and_yara_x_output_is_quarantined_by_the_template(tmp_path: Path) -> None:
    rules = yara_rules_dir() / "droppers.yar"
    with DaemonProcess(tmp_path, workflows=templates("yara_match")) as d:
        bad, clean = infected_tree(d.root / "home" / "bob")
        scan = subprocess.run(["yara", "-r", "-N", "-g", "-m", str(rules), str(d.root / "home")],
                              capture_output=True, timeout=120, check=True)
        r = run_ingest("yara", scan.stdout, d.spool)
        assert r.returncode == 0 and r.summary.endswith("4 detections written"), r.stderr
        # YARA-X (`yr scan --output-format=ndjson -g`): one object per file, as its documentation shows.
        x_dir = d.root / "srv"
        x_dir.mkdir()
        x_bad, x_clean = x_dir / "webshell\n.php", x_dir / "ok.php"
        x_bad.write_bytes(b"SDD-DROPPER")
        x_clean.write_bytes(b"<?php echo 1; ?>")
        ndjson = b"".join(json.dumps(obj).encode() + b"\n" for obj in (
            {"path": str(x_bad), "rules": [{"namespace": "default", "identifier": "Dropper", "tags": ["malware"]}]},
            {"path": str(x_clean), "rules": []}))
        r = run_ingest("yara", ndjson, d.spool)
        assert r.returncode == 0 and r.summary == "sdd-ingest: yara: 2 lines: 1 detection written, 1 not detections"
        d.wait_for(lambda: runs_of(d, "yara_match") == 5, what="five quarantines")
        assert [p for p in [*bad, x_bad] if os.path.lexists(p)] == [] and clean.exists() and x_clean.exists()
        quarantined = {r["original_path"] for r in d.query("SELECT original_path FROM quarantine")}
        assert quarantined == {str(p) for p in [*bad, x_bad]}
        scanners = {json.loads(r["raw"])["scanner"] for r in d.query("SELECT raw FROM detections")}
        assert scanners == {"yara", "yara-x"}


@pytest.mark.skipif(shutil.which("yara") is None, reason="Debian's yara is not installed")
def test_the_documented_nightly_yara_scan_runs_through_the_daemon(tmp_path: Path) -> None:
    pytest.importorskip("yara", reason="yara-python is not installed")
    rules = yara_rules_dir()
    root = tmp_path / "sdd" / "home"
    # The nightly scan workflow of docs/sources.md, scanning the test's tree instead of /home.
    [nightly] = [b for b in blocks("yaml") if "engine: yara" in b]
    assert "path: /home," in nightly
    with DaemonProcess(tmp_path, workflows={"yara_nightly": nightly.replace("path: /home,", f"path: {root},")},
                       config_overrides={"actions": {"yara_rules": str(rules)}}) as d:
        bad, clean = infected_tree(root / "bob")
        (root / "bob" / "escape").symlink_to(rules)                  # never followed out of the tree
        expected = subprocess.run(["yara", "-r", "-N", str(rules / "droppers.yar"), str(root)],
                                  capture_output=True, timeout=120, check=True).stdout
        r = subprocess.run([SDDCTL, "--socket", str(d.socket), "--json", "run", "yara_nightly", "--wait"],
                           capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        scan = step(d, "yara_nightly", "scan")["result"]
        assert scan["engine"] == "yara" and scan["threats_found"] == 4 and scan["complete"]
        assert {f["file"] for f in scan["findings"]} == {str(p) for p in bad}
        assert scan["summary"]["skipped_symlinks"] == 1
        # Debian's yara agrees: each finding's name followed by a newline is in its (raw) output.
        for path in bad:
            assert f"Dropper {path}\n".encode() in expected
        assert [p for p in bad if os.path.lexists(p)] == [] and clean.exists()
        assert d.count("SELECT count(*) FROM quarantine") == 4
