"""System mode through the front door: `sdd --config FILE` started as root runs the daemon as an unprivileged
user (no capabilities, no_new_privs) beside a root executor; a quarantine lands in the root-only vault; and
kill -9 of the executor mid-step is a retried step that doubles nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import tests.support.daemon as daemon_support
from tests.support.daemon import DaemonProcess
from tests.support.trusted import traversable_tmpdir

from ..actions.procs import SYSTEM_PYTHON, Procs, holder_code, wait_until

USER = "sddtest"
WORKFLOW = {
    "workflow_id": "contain", "name": "contain", "trigger": {"type": "malware"},
    "steps": [
        {"step_id": "quarantine", "type": "action", "action": "quarantine_file",
         "params": {"file_path": "{{ detection.file_path }}"}},
        {"step_id": "kill", "type": "action", "action": "kill_process", "max_retries": 3, "retry_delay": 0.2,
         "params": {"process_id": "{{ detection.process_id }}", "timeout": 1.0}},
    ]}

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None
                                or not os.path.exists(SYSTEM_PYTHON), reason="needs root and useradd")


def account() -> int:
    """A real system user standing in for `sdd` (created once; the Debian package makes the real one)."""
    try:
        import pwd
        return pwd.getpwnam(USER).pw_uid
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                       check=False, capture_output=True, timeout=60)
        import pwd
        return pwd.getpwnam(USER).pw_uid


def status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


@pytest.fixture
def base() -> Iterator[Path]:
    with traversable_tmpdir("sddsys-") as d:
        yield d


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def reachable_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's user cannot read root's pyenv: run Debian's python3 (the same 3.11) on the venv's
    packages, as the Debian package runs sdd."""
    monkeypatch.setattr(daemon_support, "sdd_command", lambda: [
        SYSTEM_PYTHON, "-c", "import sys; from sdd.main import main; sys.exit(main())"])


def python_path() -> dict[str, str]:
    site = REPO / ".venv" / "lib" / "python3.11" / "site-packages"
    return {"PYTHONPATH": os.pathsep.join(str(p) for p in (REPO, REPO / "client", site))}


def start(base: Path, uid: int) -> DaemonProcess:
    d = DaemonProcess(base, workflows={"contain": WORKFLOW}, user_mode=False, env=python_path(), config_overrides={
        "api": {"socket_group": "root"},
        "actions": {"daemon_user": USER, "protected_processes": []}})
    return d.start_dropping()


def tree(d: DaemonProcess) -> dict[str, psutil.Process]:
    kids = psutil.Process(d.pid).children()
    return {"supervisor": psutil.Process(d.pid),
            **{("daemon" if k.uids().real != 0 else "executor"): k for k in kids}}


def test_the_daemon_runs_unprivileged_and_quarantines_through_the_root_executor(base: Path, procs: Procs) -> None:
    uid = account()
    d = start(base, uid)
    try:
        ps = tree(d)
        assert set(ps) == {"supervisor", "daemon", "executor"}, ps
        daemon = status(ps["daemon"].pid)
        assert daemon["Uid"].split() == [str(uid)] * 4 and daemon["CapEff"] == "0" * 16, daemon
        assert daemon["CapPrm"] == "0" * 16 and daemon["NoNewPrivs"] == "1"
        assert all(status(p.pid)["Uid"].split()[0] == "0" for p in (ps["executor"], ps["supervisor"]))
        # What ps shows: the daemon as the user; as root only the executor and the monitor that restarts it.
        assert (ps["executor"].name(), ps["supervisor"].name()) == ("sdd-executor", "sdd-monitor")
        assert ps["daemon"].threads() and ps["executor"].uids().effective == 0

        evil = d.root / "evil.exe"
        evil.write_bytes(b"MZ not really evil " * 100)
        holder = procs.python(holder_code(evil, extra=(
            "import signal\n"
            f"signal.signal(signal.SIGTERM, lambda *a: open({str(base / 'terms')!r}, 'a').write('term\\n'))")))
        executor = ps["executor"].pid
        d.drop({"type": "malware", "file_path": str(evil), "process_id": holder.pid,
                "process_start_time": psutil.Process(holder.pid).create_time()})
        # The kill step is in the executor (TERM sent, waiting out the grace): kill -9 the executor there.
        wait_until(lambda: (base / "terms").exists(), "the first SIGTERM")
        os.kill(executor, signal.SIGKILL)
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status NOT IN ('pending', 'running')") == 1)
        [run] = d.query("SELECT status FROM runs")
        steps = {r["step_id"]: r for r in d.query("SELECT step_id, status, attempts FROM steps")}
        assert run["status"] == "completed", (dict(run), d.log())
        assert steps["kill"]["status"] == "completed" and steps["kill"]["attempts"] >= 2, dict(steps["kill"])
        holder.wait(30)
        # The supervisor started a new executor; the old one is gone.
        again = tree(d)
        assert again["executor"].pid != executor and again["daemon"].pid == ps["daemon"].pid
        # The quarantine happened once and is root's: the daemon's user cannot read the vault.
        vault = d.state / "vault"
        st = vault.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o700)
        blobs = [n for n in os.listdir(vault) if n.endswith(".bin")]
        assert len(blobs) == 1 and (vault / blobs[0]).stat().st_uid == 0
        assert d.count("SELECT count(*) FROM quarantine") == 1
        assert d.count("SELECT count(*) FROM audit WHERE action = 'kill_process'") == 1
        assert not evil.exists()
    finally:
        d.close()
    assert not psutil.pid_exists(d.pid) or psutil.Process(d.pid).status() == psutil.STATUS_ZOMBIE


def test_a_missing_daemon_user_is_a_clear_start_up_error(base: Path) -> None:
    d = DaemonProcess(base, user_mode=False, env=python_path(),
                      config_overrides={"actions": {"daemon_user": "no-such-sdd-user"}})
    try:
        d.start(wait_ready=False)
        assert d.proc is not None
        assert d.proc.wait(60) == 1
        assert "user 'no-such-sdd-user' does not exist" in d.log()
    finally:
        d.close()


def test_kill_9_of_the_daemon_mid_step_loses_nothing_and_doubles_nothing(base: Path, procs: Procs) -> None:
    uid = account()
    d = start(base, uid)
    try:
        evil = d.root / "evil.exe"
        evil.write_bytes(b"MZ not really evil " * 100)
        terms = base / "terms"
        holder = procs.python(holder_code(evil, extra=(
            "import signal\n"
            f"signal.signal(signal.SIGTERM, lambda *a: open({str(terms)!r}, 'a').write('term\\n'))")))
        d.drop({"type": "malware", "file_path": str(evil), "process_id": holder.pid,
                "process_start_time": psutil.Process(holder.pid).create_time()})
        wait_until(terms.exists, "the first SIGTERM")  # the kill step is in flight in the executor
        tree(d)["daemon"].kill()
        assert d.proc is not None and d.proc.wait(60) == 128 + signal.SIGKILL  # the monitor ends with it
        d.close()
        d = start(base, uid)  # what systemd (Restart=) or an operator does
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status NOT IN ('pending', 'running')") == 1)
        [run] = d.query("SELECT status FROM runs")
        assert run["status"] == "completed", (dict(run), d.log())
        holder.wait(30)
        assert d.count("SELECT count(*) FROM quarantine") == 1  # the quarantine before the crash, once
        assert d.count("SELECT count(*) FROM detections") == 1
        assert d.count("SELECT count(*) FROM audit WHERE action = 'kill_process'") == 1
    finally:
        d.close()
