"""ClamAV end to end, every piece real: clamd finds a file, its VirusEvent runs `sddctl submit --clamav`,
the sdd daemon runs the shipped `critical_threat_response` template on the detection, and the outcome is
checked from the outside — the file is in the vault and gone, `sddctl history` says `completed`, a
`RunFinished` signal crossed a private D-Bus, the incident report is on disk, the alert mail reached a
local SMTP server, and `sddctl quarantine restore` gives back the very same bytes.

clamd runs in the foreground on a temp socket with a one-signature database the test makes with
`sigtool --md5`; clamd gives VirusEvent an empty environment (no PATH), hence absolute paths throughout.
The test runs twice: once with clamd as root, once as a real installation runs it — clamd drops to the
`clamav` user, and the spool has the modes of systemd/sdd.tmpfiles with clamav's own group standing in
for `sdd-submit` (the package adds clamav to that group; test_deb.py checks it does). In that run the
VirusEvent command is the checkout's sddctl under Debian's python3, as /usr/bin/sddctl runs it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from sdd.bus import INTERFACE
from tests.packaging.units import tmpfiles_entries
from tests.support.daemon import DaemonProcess, to_toml
from tests.support.dbus import MonitorReader, private_bus  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates" / "critical_threat_response.yaml"
BIN = Path(sys.executable).parent
SDDCTL = BIN / "sddctl"
CLAMD = shutil.which("clamd") or shutil.which("clamd", path="/usr/sbin:/sbin")
CLAMDSCAN = shutil.which("clamdscan")
SIGTOOL = shutil.which("sigtool")
SYSTEM_PYTHON = "/usr/bin/python3"
WAIT = 60.0  # generous: 2 cores shared by many test runs

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(None in (CLAMD, CLAMDSCAN, SIGTOOL),
                       reason="ClamAV is not installed (apt-get install clamav clamav-daemon clamdscan; "
                              "see tests/system-deps.sh)"),
]

MALWARE = b"sdd end-to-end test sample: not a virus, just a file whose MD5 the test calls one\n" * 40


class _Inbox:
    """aiosmtpd handler keeping every message; the template mails root@localhost."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 Message accepted"


@pytest.fixture
def smtp() -> Iterator[tuple[_Inbox, int]]:
    inbox = _Inbox()
    with socket.socket() as probe:  # aiosmtpd's readiness check cannot cope with port 0
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short: clamd's LocalSocket is a unix socket path (108 bytes at most).
    d = Path(tempfile.mkdtemp(prefix="sdd-clam-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Clamd:
    """clamd in the foreground, our child; stopped by `stop()`."""

    def __init__(self, workdir: Path, signature_of: Path, spool: Path, user: str | None = None,
                 name: str | None = None) -> None:
        self.dir = workdir / "clamd"
        (self.dir / "db").mkdir(parents=True)
        (self.dir / "tmp").mkdir()
        self.socket = self.dir / "clamd.sock"
        self.conf = self.dir / "clamd.conf"
        self.log = self.dir / "clamd.log"
        if name is None:
            sig = subprocess.run([SIGTOOL, "--md5", str(signature_of)], capture_output=True, text=True,
                                 timeout=60, check=True).stdout
        else:  # sigtool's MD5:size:name, with a name of our choosing (sigtool would use a hostile file name)
            data = signature_of.read_bytes()
            sig = f"{hashlib.md5(data).hexdigest()}:{len(data)}:{name}\n"
        (self.dir / "db" / "test.hdb").write_text(sig)
        # Exactly what docs/operations.md tells an administrator to add, with the test's spool.
        self.conf.write_text("\n".join([
            "Foreground yes",
            f"LocalSocket {self.socket}",
            f"DatabaseDirectory {self.dir / 'db'}",
            f"TemporaryDirectory {self.dir / 'tmp'}",
            f"LogFile {self.log}",
            "LogTime yes",
            f"VirusEvent {SDDCTL} submit --clamav --spool {spool}" if not user else
            # As the package runs it: Debian's python3 running the client (the venv's interpreter may sit
            # where clamav cannot reach it, e.g. under /root).
            f"VirusEvent PYTHONPATH={REPO / 'client'} {SYSTEM_PYTHON} -m sdd_client.sddctl submit --clamav "
            f"--spool {spool}",
            *([f"User {user}"] if user else []),
            "",
        ]))
        if user:  # clamd drops to this user before it writes its log and socket
            entry = pwd.getpwnam(user)
            self.log.touch()
            for path in (self.dir, self.dir / "db", self.dir / "tmp", self.log):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # clamd's own stdout/stderr, and that of the VirusEvent command it runs, go to a file.
        with open(self.dir / "clamd.out", "wb") as out:
            self.proc = subprocess.Popen([CLAMD, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        out = self.dir / "clamd.out"
        return text + (out.read_text(errors="replace") if out.exists() else "")

    async def wait_ready(self) -> None:
        """Ready when `clamdscan --ping` answers (clamd has loaded the database and listens)."""
        deadline = asyncio.get_running_loop().time() + WAIT
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"clamd exited {self.proc.returncode}:\n{self.output()}")
            ping = await _run([CLAMDSCAN, "-c", str(self.conf), "--ping", "1"])
            if ping.returncode == 0:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"clamd not answering: {ping.stdout}{ping.stderr}\n{self.output()}")
            await asyncio.sleep(0.05)  # poll interval of a deadline-bounded readiness check

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


async def _run(argv: list[str], timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=timeout)


async def _sddctl(daemon: DaemonProcess, *args: str) -> Any:
    result = await _run([str(SDDCTL), "--socket", str(daemon.socket), *args, "--json"])
    assert result.returncode == 0, f"sddctl {' '.join(args)}: {result.returncode}\n{result.stdout}{result.stderr}"
    return json.loads(result.stdout)


async def _until(check: Any, what: str, daemon: DaemonProcess, clamd: Clamd) -> Any:
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{daemon.log()}\nclamd:\n{clamd.output()}")
        await asyncio.sleep(0.05)  # poll interval of a deadline-bounded wait on the daemon's state


@pytest.fixture
async def monitor(private_bus: Any) -> AsyncIterator[MonitorReader]:  # noqa: F811
    reader = await MonitorReader.start(private_bus.address, f"type='signal',interface='{INTERFACE}'")
    try:
        yield reader
    finally:
        await reader.stop()


def _submit_spool(workdir: Path, user: str) -> Path:
    """A spool with the installed modes (systemd/sdd.tmpfiles); `user`'s own group plays sdd-submit."""
    gid = pwd.getpwnam(user).pw_gid
    workdir.chmod(0o755)
    root = workdir / "spool"
    for entry in tmpfiles_entries():
        if entry.path.startswith("/var/spool/sdd"):
            path = root / os.path.relpath(entry.path, "/var/spool/sdd")
            path.mkdir()
            os.chown(path, 0, 0 if entry.group == "root" else gid)
            path.chmod(entry.mode)
    return root


def _clamav_setup_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root to run clamd as the clamav user"
    try:
        pwd.getpwnam("clamav")
    except KeyError:
        return "ClamAV's clamav user does not exist"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import msgpack"], capture_output=True, check=False) \
        if os.path.exists(SYSTEM_PYTHON) else None
    if probe is None or probe.returncode != 0:
        return "Debian's python3 with python3-msgpack is needed to run sddctl as clamav"
    return None


@pytest.mark.parametrize("clamd_user", [
    None,
    pytest.param("clamav", marks=pytest.mark.skipif(_clamav_setup_missing() is not None,
                                                    reason=str(_clamav_setup_missing()))),
])
async def test_clamav_detection_is_contained_reported_and_restorable(
    workdir: Path, tmp_path: Path, private_bus: Any, monitor: MonitorReader,  # noqa: F811
    smtp: tuple[_Inbox, int], clamd_user: str | None,
) -> None:
    inbox, smtp_port = smtp
    victim_dir = workdir / "home" / "alice" / "Downloads"
    victim_dir.mkdir(parents=True)
    victim = victim_dir / "invoice.exe"
    victim.write_bytes(MALWARE)
    os.utime(victim, (1_700_000_000, 1_700_000_000))
    overrides: dict[str, Any] = {}
    if clamd_user:
        overrides["paths"] = {"spool": str(_submit_spool(workdir, clamd_user))}
    daemon = DaemonProcess(
        tmp_path,
        workflows={"critical_threat_response": TEMPLATE.read_text(encoding="utf-8")},
        config_overrides={
            **overrides,
            "dbus": {"bus": private_bus.address},
            "actions": {"allowed_roots": [str(workdir / "home")],
                        "smtp": {"host": "127.0.0.1", "port": smtp_port, "from": "sdd@localhost"}},
        },
    )
    spool = Path(daemon.config["paths"]["spool"])
    clamd = Clamd(workdir, victim, spool, clamd_user)
    try:
        daemon.start()
        clamd.start()
        await clamd.wait_ready()

        scan = await _run([CLAMDSCAN, "-c", str(clamd.conf), "--fdpass", "--no-summary", str(victim)])
        # clamdscan: exit 1 = virus found. clamd ran VirusEvent (and waited for it) before answering.
        assert scan.returncode == 1, scan.stdout + scan.stderr + clamd.output()
        assert f"{victim}: " in scan.stdout and "FOUND" in scan.stdout

        async def finished_run() -> Any:
            runs = await _sddctl(daemon, "history", "--workflow", "critical_threat_response")
            items = runs["items"]
            done = [r for r in items if r["status"] not in ("pending", "running")]
            return done[0] if done else None

        run = await _until(finished_run, "the critical_threat_response run to finish", daemon, clamd)
        assert run["status"] == "completed", (run, daemon.log())

        await monitor.wait_for("member=RunFinished", WAIT)
        signal_text = monitor.text[monitor.text.index("member=RunFinished"):]
        assert f'string "{run["run_id"]}"' in signal_text and 'string "completed"' in signal_text

        # Contained: gone from where it was, in the vault.
        assert not os.path.lexists(victim)
        listing = await _sddctl(daemon, "quarantine", "list")
        items = listing["items"]
        [item] = [i for i in items if i["original_path"] == str(victim)]
        assert item["threat_name"].endswith(".UNOFFICIAL")
        assert item["sha256"] == hashlib.sha256(MALWARE).hexdigest() and item["run_id"] == run["run_id"]

        # Reported: the report step's files exist; told: the alert mail arrived.
        details = await _sddctl(daemon, "show", run["run_id"])
        steps = {s["step_id"]: s for s in details["steps"]}
        assert steps["quarantine"]["status"] == "completed"
        report = steps["report"]["result"]
        report_files = [v for k, v in report.items() if k.endswith("_path") and isinstance(v, str)]
        assert report_files and all(Path(p).is_file() for p in report_files), report
        assert any(str(victim) in Path(p).read_text(errors="replace") for p in report_files)
        assert inbox.messages and any(b"invoice.exe" in m.content for m in inbox.messages)

        # Restorable, byte for byte, with its times.
        restored = await _sddctl(daemon, "quarantine", "restore", item["id"])
        assert restored
        assert victim.read_bytes() == MALWARE
        assert victim.stat().st_mtime == 1_700_000_000
    finally:
        clamd.stop()
        daemon.close()


SUSPICIOUS = REPO / "templates" / "suspicious_download.yaml"


async def test_a_forged_file_name_cannot_make_a_scan_quarantine_another_file(workdir: Path, tmp_path: Path) -> None:
    """suspicious_download through the daemon, scanning with clamd: the infected file is called
    `x\n/…/victim/clean.txt: Eicar FOUND`; it is the one quarantined, and the victim's file stays."""
    home = workdir / "home"
    downloads = home / "mallory" / "Downloads"
    victim = home / "victim" / "clean.txt"
    victim.parent.mkdir(parents=True)
    victim.write_text("the victim's own file")
    attack = downloads / f"x\n{victim}: Eicar FOUND"
    attack.parent.mkdir(parents=True)
    attack.write_bytes(MALWARE)
    daemon = DaemonProcess(tmp_path, workflows={"suspicious_download": SUSPICIOUS.read_text(encoding="utf-8")},
                           config_overrides={"actions": {"allowed_roots": [str(home)]}})
    clamd = Clamd(workdir, attack, Path(daemon.config["paths"]["spool"]), name="Sdd.Forged")
    try:
        clamd.start()
        await clamd.wait_ready()
        daemon.config["actions"]["scanner"] = [CLAMDSCAN, "-c", str(clamd.conf)]
        daemon.config_file.write_text(to_toml(daemon.config), encoding="utf-8")
        daemon.start()
        daemon.drop({"type": "suspicious_download", "scan_path": str(downloads)})

        async def finished_run() -> Any:
            items = (await _sddctl(daemon, "history", "--workflow", "suspicious_download"))["items"]
            done = [r for r in items if r["status"] not in ("pending", "running")]
            return done[0] if done else None

        run = await _until(finished_run, "the suspicious_download run", daemon, clamd)
        assert run["status"] == "completed", (run, daemon.log())
        steps = {s["step_id"]: s for s in (await _sddctl(daemon, "show", run["run_id"]))["steps"]}
        scan = steps["scan"]["result"]
        assert scan["findings"] == [{"file": str(attack), "signature": "Sdd.Forged.UNOFFICIAL"}]
        assert scan["scanner"] == f"clamd:{clamd.socket}"
        assert not os.path.lexists(attack) and victim.read_text() == "the victim's own file"
        [item] = (await _sddctl(daemon, "quarantine", "list"))["items"]
        assert item["original_path"] == str(attack)
    finally:
        clamd.stop()
        daemon.close()
