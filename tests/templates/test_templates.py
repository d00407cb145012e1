"""Every shipped template, end to end through the engine, on real files, processes, ClamAV and servers."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiosmtpd.controller import Controller

from sdd.actions import BUILTINS, Vault
from sdd.config import SmtpConfig
from sdd.engine import RunStatus, WorkflowEngine
from sdd.engine.specs.loader import load_workflow_dirs
from tests.actions.conftest import Env
from tests.actions.servers import Inbox, Server, free_port

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
NAMES = sorted(p.stem for p in TEMPLATES.glob("*.yaml"))
needs_clamscan = pytest.mark.skipif(not (shutil.which("clamscan") and shutil.which("sigtool")),
                                    reason="clamscan/sigtool not installed (make system-deps installs them as root)")


class Rig(Env):
    """An Env plus the servers and sinks the templates talk to."""

    def __init__(self, tmp_path: Path, smtp_port: int, webhook: Server) -> None:
        self.notes: list[tuple[str, str, str]] = []
        self.smtp_port = smtp_port
        self.webhook = webhook
        super().__init__(tmp_path)

    def configure(self, store: Any = None, notify: Any = None, **config: Any) -> None:
        config.setdefault("smtp", SmtpConfig(host="127.0.0.1", port=self.smtp_port, sender="sdd@test", timeout=5))
        super().configure(store=store, notify=notify or (lambda *a: self.notes.append(a)), **config)

    def engine(self) -> WorkflowEngine:
        return WorkflowEngine(actions=self.actions.values(), listeners=[self.services.run_log],
                              template_dirs=[TEMPLATES])

    async def run(self, name: str, context: dict[str, Any] | None = None,
                  detection: dict[str, Any] | None = None) -> Any:
        engine = self.engine()
        wf = engine.load_template(name)
        return await engine.execute_workflow(wf, context, detection=detection)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with Server() as webhook:
            r = Rig(tmp_path, port, webhook)
            r.inbox = inbox  # type: ignore[attr-defined]
            yield r
    finally:
        controller.stop()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()
        if p.stdout is not None:
            p.stdout.close()


def spawn(procs: list[subprocess.Popen], code: str = "import time; time.sleep(120)") -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", "import sys; print('ready', flush=True); " + code],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline() == "ready\n"
    procs.append(p)
    return p


def run_file(procs: list[subprocess.Popen], path: Path, *args: str) -> subprocess.Popen:
    """`path` becomes an executable (a copy of sleep) and a process runs it; returns once the kernel shows it."""
    shutil.copy(os.path.realpath(shutil.which("sleep") or "/bin/sleep"), path)
    os.chmod(path, 0o755)
    p = subprocess.Popen([str(path), *(args or ("300",))], stdout=subprocess.PIPE, text=True)
    procs.append(p)
    want = os.stat(path)
    deadline = time.monotonic() + 30
    while True:
        try:
            st = os.stat(f"/proc/{p.pid}/exe")
            if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
                return p
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{path} did not start"
        time.sleep(0.01)  # poll interval of a deadline-bounded wait for the exec


async def wait_dead(pid: int) -> bool:
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        await asyncio.sleep(0.01)
    return False


def make_db(rig: Rig, *samples: Path) -> Path:
    db = rig.tmp / "db"
    db.mkdir(exist_ok=True)
    sigs = b"".join(subprocess.run(["sigtool", "--md5", str(s)], check=True, capture_output=True).stdout
                    for s in samples)
    (db / "test.hdb").write_bytes(sigs)
    return db


def test_every_template_loads_without_warnings_or_issues() -> None:
    assert {"critical_threat_response", "scheduled_maintenance", "false_positive_handling",
            "ransomware_containment", "suspicious_download", "low_severity_notify", "falco_response", "yara_match",
            "wazuh_fim", "wazuh_undo"} <= set(NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found, issues = load_workflow_dirs([TEMPLATES], [b[0] for b in BUILTINS])
    assert issues == []
    assert sorted(found) == NAMES


async def test_critical_threat_response(rig: Rig, procs: list) -> None:
    victim = rig.root / "Downloads" / "invoice.exe"
    victim.parent.mkdir()
    runner = run_file(procs, victim)  # the process running the detected file
    claimed = spawn(procs)            # the process the detection names: a claim, nothing links it to the file
    detection = {"id": "det-1", "type": "malware", "severity": "critical", "file_path": str(victim),
                 "threat_name": "Win.Trojan.Agent", "process_id": claimed.pid,
                 "process_start_time": psutil.Process(claimed.pid).create_time()}
    result = await rig.run("critical_threat_response",
                           {"notify": "soc@localhost", "webhook_url": rig.webhook.url + "/siem"}, detection)
    assert result.status is RunStatus.COMPLETED, result.error
    assert not victim.exists()
    [item] = Vault(rig.vault).items()
    assert item["original_path"] == str(victim) and item["threat_name"] == "Win.Trojan.Agent"
    assert runner.wait(timeout=10) == -15 and claimed.poll() is None
    assert result.step_results["kill"].result["terminated"] == [runner.pid]
    report = result.step_results["report"].result
    assert Path(report["html_path"]).exists() and report["quarantine_ids"] == [item["quarantine_id"]]
    assert rig.notes and rig.notes[0][2] == "critical" and item["quarantine_id"] in rig.notes[0][1]
    [mail] = rig.inbox.messages  # type: ignore[attr-defined]
    assert mail.rcpt_tos == ["soc@localhost"]
    assert item["quarantine_id"] in message_from_bytes(mail.content).get_payload()
    [hook] = rig.webhook.requests
    assert hook["headers"]["Idempotency-Key"] == f"{result.run_id}:alert_webhook"


async def test_critical_threat_response_rolls_back_when_quarantine_fails(rig: Rig, procs: list) -> None:
    real = rig.root / "real.exe"
    real.write_bytes(b"x")
    link = rig.root / "link.exe"
    os.symlink(real, link)
    p = spawn(procs)
    detection = {"type": "malware", "severity": "critical", "file_path": str(link), "process_id": p.pid}
    result = await rig.run("critical_threat_response", {"notify": None}, detection)
    assert result.status is RunStatus.ROLLED_BACK
    assert "symbolic link" in (result.error or "")
    assert real.read_bytes() == b"x" and link.is_symlink()
    assert p.poll() is None  # the run stopped before the kill
    assert rig.vault_items() == []


@needs_clamscan
async def test_scheduled_maintenance(rig: Rig) -> None:
    sample = rig.root / "home" / "bad.bin"
    sample.parent.mkdir()
    sample.write_bytes(b"maintenance-sample-" * 10)
    db = make_db(rig, sample)
    rig.configure(updater=(sys.executable, "-c", "print('daily.cld updated')"), scanner=("clamscan", "-d", str(db)))
    result = await rig.run("scheduled_maintenance", {"scan_path": str(rig.root), "notify": "admin@localhost"})
    assert result.status is RunStatus.COMPLETED, result.error
    assert result.step_results["scan"].result["threats_found"] == 1
    assert sample.exists()  # maintenance reports; it does not touch files
    [mail] = rig.inbox.messages  # type: ignore[attr-defined]
    msg = message_from_bytes(mail.content)
    assert msg["Subject"] == "[sdd] maintenance: 1 threat(s) found"
    assert "Definitions update: completed" in msg.get_payload()


async def test_scheduled_maintenance_survives_a_failing_updater(rig: Rig) -> None:
    rig.configure(updater=(sys.executable, "-c", "import sys; sys.exit(1)"),
                  scanner=(sys.executable, "-c", "import sys; sys.exit(0)"))
    wf = rig.engine().load_template("scheduled_maintenance")
    wf.steps[0].max_retries = 0  # the shipped 3 retries x 30 s would make the test slow
    result = await rig.engine().execute_workflow(wf, {"scan_path": str(rig.root), "notify": "a@localhost"})
    assert result.status is RunStatus.COMPLETED, result.error
    assert result.step_results["update"].status.value == "failed"
    assert "Definitions update: failed" in message_from_bytes(
        rig.inbox.messages[0].content).get_payload()  # type: ignore[attr-defined]


async def test_false_positive_handling(rig: Rig, tmp_path: Path) -> None:
    from sdd.store import Store
    store = Store.open(tmp_path / "sdd.db")
    try:
        rig.configure(store=store)
        tool = rig.root / "vendor-tool.exe"
        tool.write_bytes(b"legit but flagged")
        os.chmod(tool, 0o751)
        q = await rig.call("quarantine_file", file_path=str(tool))
        tool.write_bytes(b"a newer file at the same path")  # must not be overwritten
        result = await rig.run("false_positive_handling", {"quarantine_id": q["quarantine_id"],
                                                           "reason": "vendor tool", "notify": "soc@localhost"})
        assert result.status is RunStatus.COMPLETED, result.error
        restored = Path(result.step_results["restore"].result["restored_path"])
        assert restored != tool and restored.read_bytes() == b"legit but flagged"
        assert tool.read_bytes() == b"a newer file at the same path"
        assert store.is_excluded(sha256=q["sha256"])
        assert store.list_false_positives()[0]["reason"] == "vendor tool"
        assert len(rig.inbox.messages) == 1  # type: ignore[attr-defined]
    finally:
        store.close()


async def test_false_positive_handling_by_path(rig: Rig) -> None:
    tool = rig.root / "tool.exe"
    tool.write_bytes(b"flagged")
    await rig.call("quarantine_file", file_path=str(tool))
    result = await rig.run("false_positive_handling", {"file_path": str(tool)})
    assert result.status is RunStatus.COMPLETED, result.error
    assert tool.read_bytes() == b"flagged"
    assert ("sha256", result.step_results["restore"].result["sha256"]) in rig.services.memory_exclusions


async def test_ransomware_containment(rig: Rig, procs: list) -> None:
    payload = rig.root / "crypt0r.exe"
    payload.write_bytes(b"ransomware")
    code = (f"import subprocess, sys, time; f = open({str(payload)!r}, 'rb'); "
            "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']) for _ in range(2)]; "
            "print(' '.join(str(k.pid) for k in kids), flush=True); time.sleep(120)")
    p = spawn(procs, code)  # holds the payload open, so it is the payload's process
    assert p.stdout is not None
    kids = [int(x) for x in p.stdout.readline().split()]
    notes = [rig.root / "docs" / f"README_{i}.txt" for i in range(5)]
    notes[0].parent.mkdir()
    for i, n in enumerate(notes):
        n.write_bytes(f"pay up {i}".encode())
    detection = {"id": "r-1", "type": "ransomware", "severity": "critical", "threat_name": "Ransom.Test",
                 "process_id": p.pid, "process_start_time": psutil.Process(p.pid).create_time(),
                 "file_path": str(payload), "files": [str(n) for n in notes]}
    result = await rig.run("ransomware_containment", {"notify": "soc@localhost"}, detection)
    assert result.status is RunStatus.COMPLETED, result.error
    assert p.wait(timeout=10) == -15
    assert all([await wait_dead(k) for k in kids])
    assert not payload.exists() and not any(n.exists() for n in notes)
    assert len(Vault(rig.vault).items()) == 6
    assert len(result.step_results["report"].result["quarantine_ids"]) == 6
    assert rig.notes[0][2] == "critical" and len(rig.inbox.messages) == 1  # type: ignore[attr-defined]


@needs_clamscan
async def test_suspicious_download(rig: Rig) -> None:
    downloads = rig.root / "alice" / "Downloads"
    downloads.mkdir(parents=True)
    bad1, bad2 = downloads / "setup.exe", downloads / "crack.zip"
    bad1.write_bytes(b"first-bad-sample" * 4)
    bad2.write_bytes(b"second-bad-sample" * 4)
    clean = downloads / "photo.jpg"
    clean.write_bytes(b"just a photo")
    rig.configure(scanner=("clamscan", "-d", str(make_db(rig, bad1, bad2))))
    detection = {"type": "suspicious_download", "file_path": str(bad1)}
    result = await rig.run("suspicious_download", None, detection)
    assert result.status is RunStatus.COMPLETED, result.error
    assert result.step_results["scan"].result["threats_found"] == 2
    assert not bad1.exists() and not bad2.exists() and clean.exists()
    items = {i["original_path"]: i for i in Vault(rig.vault).items()}
    assert set(items) == {str(bad1), str(bad2)}
    assert items[str(bad1)]["threat_name"] == "setup.exe.UNOFFICIAL"
    assert rig.notes and rig.notes[0][0] == "2 threat(s) in your downloads"


@needs_clamscan
async def test_suspicious_download_clean_does_nothing(rig: Rig) -> None:
    downloads = rig.root / "Downloads"
    downloads.mkdir()
    (downloads / "ok.txt").write_text("fine")
    other = rig.tmp / "unrelated"
    other.write_bytes(b"unrelated sample")
    rig.configure(scanner=("clamscan", "-d", str(make_db(rig, other))))
    result = await rig.run("suspicious_download", None, {"type": "suspicious_download",
                                                          "file_path": str(downloads / "ok.txt")})
    assert result.status is RunStatus.COMPLETED, result.error
    assert result.step_results["quarantine_findings"].status.value == "skipped"
    assert (downloads / "ok.txt").exists() and rig.notes == []


async def test_low_severity_notify_touches_nothing(rig: Rig, procs: list) -> None:
    victim = rig.root / "adware.exe"
    victim.write_bytes(b"annoying")
    p = spawn(procs)
    detection = {"type": "pua", "severity": "low", "file_path": str(victim), "threat_name": "PUA.Toolbar",
                 "process_id": p.pid}
    result = await rig.run("low_severity_notify", None, detection)
    assert result.status is RunStatus.COMPLETED, result.error
    assert victim.read_bytes() == b"annoying" and p.poll() is None
    assert rig.notes == [("sdd: PUA.Toolbar", f"{victim} — no action taken", "low")]
    assert rig.vault_items() == []


async def test_critical_threat_response_run_by_hand_with_context(rig: Rig, procs: list) -> None:
    # The original engine's way: the target in the workflow context, no detection.
    victim = rig.root / "malware.exe"
    p = run_file(procs, victim)
    result = await rig.run("critical_threat_response", {"file_path": str(victim), "notify": None})
    assert result.status is RunStatus.COMPLETED, result.error
    assert not victim.exists() and p.wait(timeout=10) == -15


def spawn_as_nobody(procs: list[subprocess.Popen]) -> subprocess.Popen:
    """A process of another user (uid 65534), as a shell in a container would be."""
    p = subprocess.Popen([shutil.which("sleep") or "/bin/sleep", "300"], user=65534, group=65534,
                         stdout=subprocess.DEVNULL)
    procs.append(p)
    deadline = time.monotonic() + 30
    while psutil.Process(p.pid).uids().real != 65534:   # until the child has dropped to that uid
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return p


def falco_detection(p: subprocess.Popen, rule: str = "Terminal shell in container", **more: Any) -> dict[str, Any]:
    return {"id": f"falco:{p.pid}", "type": "falco", "source": "falco", "severity": "low", "threat_name": rule,
            "process_id": p.pid, "process_start_time": psutil.Process(p.pid).create_time(),
            "process_exe": os.path.realpath(shutil.which("sleep") or "/bin/sleep"), "host": "web-1", **more}


@pytest.mark.skipif(os.geteuid() != 0, reason="signals another user's process")
async def test_falco_response_kills_the_process_falco_saw(rig: Rig, procs: list) -> None:
    shell = spawn_as_nobody(procs)
    bystander = spawn_as_nobody(procs)
    result = await rig.run("falco_response", {"notify": "soc@localhost"},
                           falco_detection(shell, "Drop and execute new binary in container"))
    assert result.status is RunStatus.COMPLETED, result.error
    assert shell.wait(timeout=10) == -15 and bystander.poll() is None
    kill = result.step_results["kill"].result
    assert kill["terminated"] == [shell.pid] and kill["processes"][0]["uid"] == 65534
    report = result.step_results["report"].result
    assert Path(report["html_path"]).exists()
    assert rig.notes == [("Falco: Drop and execute new binary in container",
                          f"Process {shell.pid} ({kill['processes'][0]['exe']}) was stopped.", "critical")]
    [mail] = rig.inbox.messages  # type: ignore[attr-defined]
    assert f"Stopped: [{shell.pid}]" in message_from_bytes(mail.content).get_payload()


@pytest.mark.skipif(os.geteuid() != 0, reason="signals another user's process")
async def test_falco_response_leaves_a_process_whose_start_time_does_not_match(rig: Rig, procs: list) -> None:
    p = spawn_as_nobody(procs)
    wrong = falco_detection(p)
    wrong["process_start_time"] -= 5.0    # the pid now names another process than the one Falco saw
    result = await rig.run("falco_response", None, wrong)
    assert result.status is RunStatus.COMPLETED, result.error
    kill = result.step_results["kill"]
    assert kill.status.value == "failed" and "pid was reused, not killing it" in (kill.error or "")
    assert p.poll() is None and rig.notes[-1][1] == f"Process {p.pid} ({wrong['process_exe']}) was not stopped."
    unchecked = falco_detection(p)
    del unchecked["process_start_time"]   # sdd-ingest could not show it is Falco's process
    result = await rig.run("falco_response", None, unchecked)
    assert result.status is RunStatus.COMPLETED, result.error
    assert result.step_results["kill"].status.value == "skipped" and p.poll() is None
    assert rig.notes[-1][1] == f"Process {p.pid} ({unchecked['process_exe']}) was not stopped."


async def test_yara_match_quarantines_the_file(rig: Rig) -> None:
    bad = rig.root / "srv" / "up\nload.php"
    bad.parent.mkdir()
    bad.write_bytes(b"<?php eval($_POST['x']); ?>")
    detection = {"type": "yara", "source": "yara", "scanner": "yara", "severity": "high", "threat_name": "PhpShell",
                 "file_path": str(bad)}
    result = await rig.run("yara_match", None, detection)
    assert result.status is RunStatus.COMPLETED, result.error
    assert not os.path.lexists(bad)
    [item] = Vault(rig.vault).items()
    assert item["original_path"] == str(bad) and item["threat_name"] == "PhpShell"
    assert rig.notes == [("Quarantined: PhpShell", f"{bad} was moved into quarantine (id {item['quarantine_id']}).",
                          "normal")]


async def test_wazuh_fim_quarantines_and_reports(rig: Rig) -> None:
    from sdd_client.ingest.wazuh import Message

    from tests.ingest.test_wazuh import fim

    dropped = rig.root / "dropper.sh"
    dropped.write_bytes(b"#!/bin/sh\necho pwned\n")
    message = fim()
    message["parameters"]["alert"]["syscheck"]["path"] = str(dropped)
    detection = Message(message).detection()   # exactly what sdd-ingest --format wazuh writes
    result = await rig.run("wazuh_fim", None, detection)
    assert result.status is RunStatus.COMPLETED, result.error
    assert not dropped.exists()
    [item] = Vault(rig.vault).items()
    assert item["detection_id"] == detection["id"] == "wazuh:001:1795602005.77310"
    report = result.step_results["report"].result
    assert report["quarantine_ids"] == [item["quarantine_id"]] and Path(report["json_path"]).exists()
