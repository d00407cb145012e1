"""A clamd that hangs holds up the scans waiting on it, not the containment of other detections: the real
daemon, real clamd (found working, then stopped with SIGSTOP: connections are made and nothing answers), the
shipped `suspicious_download` and `critical_threat_response` templates and the default config. Before, the
scans held every run slot for their step's timeout (1200 s, then a retry), and each clamd session held a thread
of the pool the quarantines share: no malware detection was contained meanwhile."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

import tests.support.daemon as daemon_support
from tests.actions.procs import SYSTEM_PYTHON
from tests.e2e.test_clamav import (  # noqa: F401  (smtp, workdir: fixtures)
    CLAMD,
    CLAMDSCAN,
    MALWARE,
    REPO,
    SDDCTL,
    SIGTOOL,
    TEMPLATE,
    Clamd,
    _Inbox,
    _run,
    smtp,
    workdir,
)
from tests.support.daemon import DaemonProcess
from tests.support.trusted import traversable_tmpdir

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(None in (CLAMD, CLAMDSCAN, SIGTOOL),
                                 reason="ClamAV is not installed (tests/system-deps.sh)")]

RUNS = 16                # engine.max_concurrent_runs by default: also the scans at once
SCANS = RUNS + 4         # suspicious downloads whose scans clamd never answers
MALWARE_FILES = 4
DOWNLOAD = REPO / "templates" / "suspicious_download.yaml"


def _status(d: DaemonProcess) -> dict[str, Any]:
    with d.client() as c:
        status: dict[str, Any] = c.call("status")
    return status


def _scans(d: DaemonProcess) -> dict[str, Any]:
    scans: dict[str, Any] = _status(d)["scans"]
    return scans


def _daemon(base: Path, work: Path, home: Path, smtp_port: int, **system: Any) -> DaemonProcess:
    config: dict[str, dict[str, Any]] = {
        "logging": {"level": "warning"},
        "actions": {"allowed_roots": [str(home)],
                    # (where Clamd writes its clamd.conf)
                    "scanner": ["clamdscan", "-c", str(work / "clamd" / "clamd.conf")],
                    "smtp": {"host": "127.0.0.1", "port": smtp_port, "from": "sdd@localhost"}}}
    for section, values in system.pop("config", {}).items():
        config.setdefault(section, {}).update(values)
    return DaemonProcess(base, workflows={"suspicious_download": DOWNLOAD.read_text("utf-8"),
                                          "critical_threat_response": TEMPLATE.read_text("utf-8")},
                         config_overrides=config, **system)


def _clamd(work: Path, daemon: DaemonProcess, sample: Path) -> Clamd:
    clamd = Clamd(work, sample, daemon.spool)
    assert daemon.config["actions"]["scanner"][-1] == str(clamd.conf)
    # Without its VirusEvent: the control scan's finding is the workflow's to quarantine, not a detection of its own.
    clamd.conf.write_text("".join(line for line in clamd.conf.read_text().splitlines(keepends=True)
                                  if not line.startswith("VirusEvent ")))
    return clamd


async def _hang_clamd_and_contain(daemon: DaemonProcess, clamd: Clamd, home: Path, first: Path,
                                  metrics_port: int | None = None) -> None:
    clamd.start()
    await clamd.wait_ready()
    # Positive control: this clamd answers, and a suspicious download's finding is quarantined.
    daemon.drop({"type": "suspicious_download", "file_path": str(first)})
    daemon.wait_for(lambda: daemon.count("SELECT count(*) FROM quarantine") == 1 and not first.exists(),
                    what="the control download's finding in the vault")
    assert clamd.proc is not None
    os.kill(clamd.proc.pid, signal.SIGSTOP)

    for i in range(SCANS):
        clean = home / "downloads" / f"d{i}" / "notes.txt"
        clean.parent.mkdir(parents=True)
        clean.write_text("nothing to see")
        daemon.drop({"type": "suspicious_download", "file_path": str(clean)})
    daemon.wait_for(lambda: _scans(daemon) == {"at_once": RUNS, "running": RUNS, "waiting": SCANS - RUNS},
                    what="the scans at once talking to clamd, the rest in line")

    files = []
    for i in range(MALWARE_FILES):
        f = home / f"outbreak-{i}.exe"
        f.write_bytes(b"EVIL %d" % i)
        files.append(f)
        daemon.drop({"type": "malware", "severity": "critical", "file_path": str(f), "threat_name": "T"})
    daemon.wait_for(lambda: daemon.count("SELECT count(*) FROM quarantine") == 1 + MALWARE_FILES, timeout=60,
                    what="every malware file in the vault while clamd hangs")
    assert [f for f in files if f.exists()] == []
    daemon.wait_for(lambda: daemon.count("SELECT count(*) FROM runs WHERE workflow_id = "
                                         "'critical_threat_response' AND status = 'completed'") == MALWARE_FILES,
                    timeout=60, what="the malware runs completed")
    # The scans still wait on clamd: none finished, the line unchanged; `sddctl status` says so.
    assert _scans(daemon) == {"at_once": RUNS, "running": RUNS, "waiting": SCANS - RUNS}
    daemon.wait_for(lambda: _status(daemon)["run_slots"] == {"limit": RUNS, "busy": 0, "held_by_guard": 0,
                                                              "waiting_elsewhere": SCANS, "recording": 0},
                    what="the scans' runs lending their slots, nothing else active")
    shown = await _run([str(SDDCTL), "--socket", str(daemon.socket), "status"])
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert f"Active runs: {SCANS} (0 of {RUNS} slots; {SCANS} waiting on others)" in text, text
    assert f"Scans: {RUNS} running, {SCANS - RUNS} waiting (at most {RUNS} at once)" in text, text
    if metrics_port is not None:  # and the metrics a fleet scrapes
        from tests.fleet.test_metrics import scrape, value

        samples = scrape(metrics_port)
        assert value(samples, "sdd_scans", state="running") == RUNS
        assert value(samples, "sdd_scans", state="waiting") == SCANS - RUNS
        assert value(samples, "sdd_run_slots_limit") == RUNS
        assert value(samples, "sdd_run_slots", state="waiting_elsewhere") == SCANS
        assert value(samples, "sdd_run_slots", state="busy") == 0
    # (a run of idempotent steps is written once it has run the recorder's intent delay)
    daemon.wait_for(lambda: daemon.count("SELECT count(*) FROM runs WHERE workflow_id = 'suspicious_download' "
                                         "AND status = 'running'") == SCANS, what="the scans' runs recorded running")


def _stop(clamd: Clamd, daemon: DaemonProcess) -> None:
    if clamd.proc is not None and clamd.proc.poll() is None:
        os.kill(clamd.proc.pid, signal.SIGCONT)
    clamd.stop()
    daemon.close()


def _sample(home: Path) -> Path:
    first = home / "downloads" / "first" / "invoice.exe"
    first.parent.mkdir(parents=True)
    first.write_bytes(MALWARE)
    return first


async def test_a_hung_clamd_holds_up_only_the_scans(workdir: Path, tmp_path: Path,  # noqa: F811
                                                    smtp: tuple[_Inbox, int]) -> None:  # noqa: F811
    from tests.fleet.test_metrics import free_port

    home = workdir / "home"
    first = _sample(home)
    port = free_port()
    daemon = _daemon(tmp_path, workdir, home, smtp[1], config={"metrics": {"listen": f"127.0.0.1:{port}"}})
    clamd = _clamd(workdir, daemon, first)
    try:
        daemon.start()
        await _hang_clamd_and_contain(daemon, clamd, home, first, metrics_port=port)
    finally:
        _stop(clamd, daemon)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None or not os.path.exists(SYSTEM_PYTHON),
                    reason="needs root and useradd")
async def test_in_system_mode_a_hung_clamd_holds_up_only_the_scans(smtp: tuple[_Inbox, int],  # noqa: F811
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The scans run in the root executor there: its pool of threads is the one the quarantines need.
    from tests.executor.test_system_mode import USER, account, python_path

    # (the daemon's user cannot read root's pyenv: Debian's python3 on the venv's packages, as the package runs sdd)
    monkeypatch.setattr(daemon_support, "sdd_command", lambda: [
        SYSTEM_PYTHON, "-c", "import sys; from sdd.main import main; sys.exit(main())"])
    account()
    with traversable_tmpdir("sddhung-") as base:
        workdir = base / "w"
        home = workdir / "home"
        first = _sample(home)
        daemon = _daemon(base / "d", workdir, home, smtp[1], user_mode=False, env=python_path(), config={
            "api": {"socket_group": "root"}, "actions": {"daemon_user": USER, "protected_processes": []}})
        clamd = _clamd(workdir, daemon, first)
        try:
            daemon.start_dropping()
            await _hang_clamd_and_contain(daemon, clamd, home, first)
        finally:
            _stop(clamd, daemon)
