"""Every kind of step still works inside (an emulation of) the sandboxes of systemd/sdd.service and
systemd/sdd-executor.service: the daemon as an unprivileged user in the first, the root executor in the
second, talking over the executor's socket as under systemd.

systemd is not PID 1 here, so each unit's restrictions are applied by hand to its real process: in a
private mount namespace (`unshare`) everything but the unit's ReadWritePaths= is made
read-only (ProtectSystem=strict), /dev holds only the pseudo devices (PrivateDevices=) and /proc/sys and
/sys are read-only (ProtectKernelTunables=); `setpriv` sets the unit's CapabilityBoundingSet= and
NoNewPrivileges=; seccomp_exec.py (run by Debian's python3 with python3-seccomp) installs the unit's
SystemCallFilter= (resolved from systemd's own group lists), RestrictAddressFamilies=,
MemoryDenyWriteExecute= and RestrictSUIDSGID=. Not emulated: ProtectKernelModules=, ProtectKernelLogs=
and ProtectControlGroups= beyond /sys being read-only (changing the clock or the hostname is refused by
the syscall filter already), ProtectHome=, PrivateTmp= and ProtectProc=. The daemon's ReadWritePaths=
(/var/lib/sdd, /var/spool/sdd, /run/sdd) are stood in for by the test daemon's state, spool and runtime
directories. The executor gets its socket from `LISTEN_FDS`, as from sdd-executor.socket.

One detection then drives a workflow with a scan (clamscan), quarantine, delete, kill, report, email
(to a local SMTP server), a notification in the log (a desktop one needs a bus, which this daemon has
not), webhook (to a local HTTP server; both reached by the name
`localhost`, so name resolution runs under the filter too) and script step, against
another user's files and process. Restore from the vault works, and a set-uid file cannot be restored
(RestrictSUIDSGID=, as docs/security.md says).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiosmtpd.controller import Controller

from sdd.executor.spawn import give_directories
from tests.executor.test_system_mode import USER, account, python_path
from tests.support import daemon as daemon_support
from tests.support.daemon import DaemonProcess
from tests.support.trusted import traversable_tmpdir

from .units import EXECUTOR, SERVICE, syscall_allow_list, unit_settings

HERE = Path(__file__).resolve().parent
ANALYZE = shutil.which("systemd-analyze")
SETPRIV = shutil.which("setpriv")
UNSHARE = shutil.which("unshare")
CLAMSCAN = shutil.which("clamscan")
SIGTOOL = shutil.which("sigtool")
SYSTEM_PYTHON = "/usr/bin/python3"
SDDCTL = Path(sys.executable).parent / "sddctl"
VICTIM_UID = 64991


def _has_seccomp() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    return subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True, check=False).returncode == 0


pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0 or None in (ANALYZE, SETPRIV, UNSHARE, CLAMSCAN, SIGTOOL),
                       reason="needs root, systemd-analyze, setpriv, unshare and ClamAV (see tests/system-deps.sh)"),
    pytest.mark.skipif(not _has_seccomp(),
                       reason="needs Debian's python3-seccomp (apt-get install python3-seccomp)"),
]

WORKFLOW = """workflow_id: sandboxed
trigger: {type: sandboxtest}
steps:
  - step_id: scan
    action: run_scan
    params: {path: "{{ detection.file_path }}", timeout: 120}
  - step_id: quarantine
    action: quarantine_file
    params: {file_path: "{{ detection.file_path }}"}
  - step_id: delete
    action: delete_file
    params: {file_path: "{{ detection.other_file }}"}
  - step_id: kill
    action: kill_process
    params: {process_id: "{{ detection.process_id }}", trust_process_id: true, timeout: 5}
  - step_id: report
    action: generate_report
    params: {report_type: incident, format: both}
  - step_id: mail
    action: send_notification
    params: {channel: email, recipient: "root@localhost", title: "sandboxed", message: "contained"}
  - step_id: notify
    action: send_notification
    params: {channel: log, title: "sandboxed", message: "contained", urgency: critical}
  - step_id: hook
    action: call_webhook
    params: {url: "{{ detection.webhook }}", payload: {event: contained}}
  - step_id: script
    action: run_script
    params: {script: hello.sh, args: ["{{ detection.file_path }}"]}
"""
SETUID_WORKFLOW = """workflow_id: setuidtest
trigger: {type: setuidtest}
steps:
  - step_id: quarantine
    action: quarantine_file
    params: {file_path: "{{ detection.file_path }}"}
"""
SCRIPT = '#!/bin/sh\nprintf \'{"seen": "%s"}\\n\' "$1"\n'
STEPS = ("scan", "quarantine", "delete", "kill", "report", "mail", "notify", "hook", "script")


def _cap_number(name: str) -> int:
    numbers = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_KILL": 5}
    return numbers[name]


def _policy(unit: Path) -> dict[str, Any]:
    s = unit_settings(unit)
    families = [int(getattr(socket, name)) for name in s["RestrictAddressFamilies"][0].split()]
    return {
        "allow": sorted(syscall_allow_list(unit, ANALYZE)),  # type: ignore[arg-type]
        "address_families": families,
        "deny_write_execute": s["MemoryDenyWriteExecute"] == ["yes"],
        "restrict_suid_sgid": s["RestrictSUIDSGID"] == ["yes"],
    }


@pytest.fixture
def servers() -> Iterator[dict[str, Any]]:
    mails: list[Any] = []
    hooks: list[bytes] = []

    class Inbox:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            mails.append(envelope)
            return "250 OK"

    class Hook(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            hooks.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            self.send_response(204)
            self.end_headers()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        smtp_port = probe.getsockname()[1]
    smtp = Controller(Inbox(), hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"smtp_port": smtp_port, "webhook": f"http://localhost:{http.server_address[1]}/hook",
               "mails": mails, "hooks": hooks}
    finally:
        http.shutdown()
        http.server_close()
        thread.join(timeout=30)
        smtp.stop()


@pytest.fixture
def scene() -> Iterator[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="sdd-sandbox-", dir="/tmp"))
    base.chmod(0o755)
    home = base / "home" / "victim"
    home.mkdir(parents=True)
    (base / "home").chmod(0o755)
    evil = home / "evil.exe"
    evil.write_bytes(b"sandboxed sample\n" * 64)
    setuid_file = home / "setuid.bin"
    setuid_file.write_bytes(b"set-uid sample\n")
    for f in (evil, setuid_file):
        os.chown(f, VICTIM_UID, VICTIM_UID)
    evil.chmod(0o600)
    setuid_file.chmod(0o4755)  # after chown, which clears set-id bits
    os.chown(home, VICTIM_UID, VICTIM_UID)
    home.chmod(0o700)
    sticky = base / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    other = sticky / "other.bin"
    other.write_bytes(b"x")
    os.chown(other, VICTIM_UID, VICTIM_UID)
    db = base / "db"
    db.mkdir()
    (db / "test.hdb").write_text(subprocess.run([SIGTOOL, "--md5", str(evil)], capture_output=True, text=True,
                                                check=True, timeout=60).stdout)
    proc = subprocess.Popen([SETPRIV, f"--reuid={VICTIM_UID}", f"--regid={VICTIM_UID}", "--clear-groups",
                             "sleep", "600"], stdin=subprocess.DEVNULL)
    try:
        yield {"base": base, "evil": evil, "setuid": setuid_file, "other": other, "db": db, "proc": proc}
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def _sddctl(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SDDCTL), "--socket", str(d.socket), *args], capture_output=True, text=True,
                          timeout=60, check=False)


def _sandboxed(unit: Path, writable: list[str], policy: Path, identity: list[str], program: list[str]) -> list[str]:
    """`program` inside the unit's emulated sandbox: mounts, then identity and capabilities, then seccomp."""
    caps = [c for v in unit_settings(unit)["CapabilityBoundingSet"] for c in v.split()]
    bounding = "-all" + "".join(",+" + c.removeprefix("CAP_").lower() for c in caps)
    policy.write_text(json.dumps(_policy(unit)))
    return [UNSHARE, "--mount", "--propagation", "private",
            SYSTEM_PYTHON, "-I", str(HERE / "seccomp_exec.py"), "--protect-system", ":".join(writable), "--",
            SETPRIV, *identity, f"--bounding-set={bounding}", "--inh-caps=-all", "--no-new-privs",
            SYSTEM_PYTHON, "-I", str(HERE / "seccomp_exec.py"), str(policy), "--", *program]


def _status(pid: int) -> dict[str, str]:
    return {k: v.strip() for k, v in (line.split(":\t", 1) for line in
                                      Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)}


@pytest.fixture
def base() -> Iterator[Path]:
    with traversable_tmpdir("sddsbx-") as d:
        yield d


def test_every_step_type_works_inside_the_units_sandbox(
        tmp_path: Path, base: Path, scene: dict[str, Any], servers: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    uid = account()
    import pwd
    caps = unit_settings(EXECUTOR)["CapabilityBoundingSet"][0].split()
    executor_writable = [p.lstrip("-") for v in unit_settings(EXECUTOR)["ReadWritePaths"] for p in v.split()]
    assert "/tmp" in executor_writable  # the scene's victims live under /tmp
    assert unit_settings(SERVICE)["CapabilityBoundingSet"] == [""]
    d = DaemonProcess(base, workflows={"sandboxed": WORKFLOW, "setuidtest": SETUID_WORKFLOW},
                      scripts={"hello.sh": SCRIPT}, user_mode=False,
                      env={**python_path(), "SDD_EXECUTOR_SOCKET": str(base / "executor.sock")}, config_overrides={
                          "api": {"socket_group": "root"},
                          "actions": {"allowed_roots": [str(scene["base"] / "home"), str(scene["base"] / "tmp")],
                                      "protected_processes": [], "daemon_user": USER,
                                      "scanner": [CLAMSCAN, "-d", str(scene["db"])],
                                      "smtp": {"host": "localhost", "port": servers["smtp_port"]}},
                      })
    give_directories(pwd.getpwuid(uid), d.state, d.spool, d.runtime)
    sdd = daemon_support.sdd_command()  # the venv's, for the executor (root reads root's pyenv)
    # The daemon: user sdd, no capabilities, writing only its state, spool and runtime directories.
    daemon_cmd = _sandboxed(SERVICE, [str(d.state), str(d.spool), str(d.runtime)], base / "service.json",
                            [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"],
                            [SYSTEM_PYTHON, "-c", "import sys; from sdd.main import main; sys.exit(main())"])
    monkeypatch.setattr(daemon_support, "sdd_command", lambda: daemon_cmd)
    # The executor: root with the unit's capabilities, its socket handed over as fd 3 (LISTEN_FDS).
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(base / "executor.sock"))
    os.chmod(base / "executor.sock", 0o666)
    listener.listen(8)
    fd = listener.fileno()
    executor_cmd = _sandboxed(EXECUTOR, executor_writable, tmp_path / "executor.json", [], [
        "/bin/bash", "-c", 'exec 3<&"$0"; LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', str(fd),  # dash: fds 0-9 only
        *sdd, "executor", "--config", str(d.config_file)])
    with open(tmp_path / "executor.log", "wb") as log:
        executor = subprocess.Popen(executor_cmd, pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
    try:
        d.start_dropping()
        proc = psutil.Process(scene["proc"].pid)
        d.drop({"type": "sandboxtest", "file_path": str(scene["evil"]), "other_file": str(scene["other"]),
                "process_id": proc.pid, "process_start_time": proc.create_time(),
                "webhook": servers["webhook"]})
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status NOT IN ('pending', 'running')") == 1)
        [run_id] = [r[0] for r in d.query("SELECT run_id FROM runs")]
        shown = _sddctl(d, "show", run_id, "--json")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        run = json.loads(shown.stdout)
        statuses = {s["step_id"]: s["status"] for s in run["steps"]}
        assert run["status"] == "completed" and statuses == dict.fromkeys(STEPS, "completed"), (
            json.dumps(run["steps"], indent=1)[-4000:] + d.log() + (tmp_path / "executor.log").read_text())
        results = {s["step_id"]: s["result"] for s in run["steps"]}
        assert results["scan"]["threats_found"] == 1
        assert results["script"]["seen"] == str(scene["evil"])
        assert servers["mails"] and servers["hooks"]
        assert not scene["evil"].exists() and not scene["other"].exists()
        assert scene["proc"].wait(timeout=30) != 0

        restored = _sddctl(d, "quarantine", "restore", results["quarantine"]["quarantine_id"])
        assert restored.returncode == 0, restored.stdout + restored.stderr + d.log()
        assert scene["evil"].read_bytes() == b"sandboxed sample\n" * 64
        assert scene["evil"].stat().st_uid == VICTIM_UID

        # The restrictions were really in force (setpriv and the wrappers exec'd into them: same pids).
        daemon, root_side = _status(d.pid), _status(executor.pid)
        assert daemon["Uid"].split()[0] == str(uid) and int(daemon["CapEff"], 16) == int(daemon["CapBnd"], 16) == 0
        assert root_side["Uid"].split()[0] == "0"
        assert int(root_side["CapBnd"], 16) == sum(1 << _cap_number(c) for c in caps)
        for pid, status in ((d.pid, daemon), (executor.pid, root_side)):
            assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "1"
            mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
            assert any(m.split()[4] == "/" and m.split()[5].startswith("ro") for m in mounts)
            assert any(m.split()[4] == "/dev" and "tmpfs" in m.split(" - ")[1] for m in mounts)

        # RestrictSUIDSGID=: a set-uid file can be quarantined, but not restored with its set-uid bit.
        d.drop({"type": "setuidtest", "file_path": str(scene["setuid"])})
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status NOT IN ('pending', 'running')") == 2)
        listing = json.loads(_sddctl(d, "quarantine", "list", "--json").stdout)
        [item] = [i for i in listing["items"] if i["original_path"] == str(scene["setuid"])]
        assert not scene["setuid"].exists()
        refused = _sddctl(d, "quarantine", "restore", item["id"])
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "set-uid/set-gid files cannot be restored" in refused.stdout + refused.stderr
        assert "internal" not in refused.stdout + refused.stderr
        assert not scene["setuid"].exists()
        assert not [p for p in scene["setuid"].parent.iterdir() if p.name.startswith(".sdd-restore")]
    finally:
        d.close()
        executor.kill()
        executor.wait()
        listener.close()
