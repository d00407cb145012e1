"""The ClamAV VirusEvent hook (hook/sdd-virusevent.c, built by `make hook`): any file-name bytes reach the
spool losslessly, clamd's empty environment is enough, an unwritable spool fails loudly, and a real clamd
running it for an outbreak gets every file — hostile names included — contained by a running daemon."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sdd_client import detection

from sdd.intake.spool import parse_detection
from tests.ingest.conftest import make_spool
from tests.support.daemon import DaemonProcess

CLAMD = shutil.which("clamd") or shutil.which("clamd", path="/usr/sbin:/sbin")
CLAMDSCAN = shutil.which("clamdscan")
SIGTOOL = shutil.which("sigtool")
SDDCTL = str(Path(sys.executable).parent / "sddctl")

HOSTILE_NAMES = [
    b"/tmp/plain.exe",
    b"/tmp/with space and 'quotes' \"double\".exe",
    b"/tmp/new\nline\r\ttab.exe",
    b"/tmp/back\\slash\\u0041.exe",
    b"/tmp/\x01\x02\x1b[31mcontrol\x7f.exe",
    b"/tmp/latin1-caf\xe9.exe",
    b"/tmp/\xff\xfe\x80\xc0\xaf.exe",  # invalid bytes and an overlong '/'
    b"/tmp/\xed\xa0\x80surrogate-in-utf8.exe",
    b"/tmp/\xf4\x90\x80\x80beyond-U+10FFFF.exe",
    b"/tmp/truncated-\xe2\x82",
    "/tmp/ünïcødé ✓ \U0001F600.exe".encode(),
    b"/tmp/--spool=/etc",
    b"/tmp/" + b"x" * 4000,
]


def run_hook(hook: Path, filename: bytes, virus: bytes = b"Eicar-Signature", *args: str,
             env: dict[bytes, bytes] | None = None, user: str | None = None,
             group: str | None = None) -> subprocess.CompletedProcess[bytes]:
    environ = {b"CLAM_VIRUSEVENT_FILENAME": filename, b"CLAM_VIRUSEVENT_VIRUSNAME": virus} if env is None else env
    argv: list[str] = [str(hook), *args]
    if user is not None:  # a real other uid, with exactly the given supplementary group
        argv = ["setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}",
                f"--groups={grp.getgrnam(group).gr_gid}" if group else "--clear-groups", *argv]
    return subprocess.run(argv, env=environ, capture_output=True, timeout=60, check=False)


def only_detection(spool: Path) -> tuple[bytes, dict]:
    [name] = os.listdir(spool / "new")
    raw = (spool / "new" / name).read_bytes()
    assert os.listdir(spool / "tmp") == []
    return raw, parse_detection(raw)  # what the daemon's intake reads


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_any_file_name_bytes_arrive_exactly(hook: Path, spool: Path, name: bytes) -> None:
    r = run_hook(hook, name, b"Win.Test.EICAR_HDB-1", "--spool", str(spool))
    assert r.returncode == 0 and r.stdout == r.stderr == b"", r.stderr
    raw, d = only_detection(spool)
    raw.decode("utf-8")  # the spool file is UTF-8
    assert detection.check(raw)[1] == []
    assert os.fsencode(d["file_path"]) == name  # what quarantine_file will open: the very same bytes
    assert d["threat_name"] == "Win.Test.EICAR_HDB-1"
    assert {k: v for k, v in d.items() if k not in ("file_path", "threat_name", "detected_at")} == {
        "type": "malware", "severity": "high", "scanner": "clamav", "source": "clamav"}
    assert time.strptime(d["detected_at"], "%Y-%m-%dT%H:%M:%SZ")


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=300).filter(lambda b: b"\x00" not in b))
def test_generated_names_round_trip(hook: Path, name: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spool = make_spool(Path(tmp))
        r = run_hook(hook, b"/" + name, bytes(reversed(name)), "--spool", str(spool))
        assert r.returncode == 0, r.stderr
        _, d = only_detection(spool)
        assert os.fsencode(d["file_path"]) == b"/" + name
        assert os.fsencode(d["threat_name"]) == bytes(reversed(name))


def test_it_writes_what_sddctl_submit_clamav_writes(hook: Path, tmp_path: Path) -> None:
    a, b = make_spool(tmp_path / "a"), make_spool(tmp_path / "b")
    env = {"CLAM_VIRUSEVENT_FILENAME": "/home/alice/ünï code.exe", "CLAM_VIRUSEVENT_VIRUSNAME": "Eicar"}
    run_hook(hook, env["CLAM_VIRUSEVENT_FILENAME"].encode(), b"Eicar", "--spool", str(a))
    r = subprocess.run([SDDCTL, "submit", "--clamav", "--spool", str(b)], env=env, capture_output=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    ours, theirs = only_detection(a)[1], only_detection(b)[1]
    # sddctl submit also makes an `id` (it prints it, so a person can follow the detection); clamd cannot
    # follow anything, so the hook leaves it out and the daemon gives the detection its own id.
    assert "id" not in ours and "id" in theirs
    assert {k: v for k, v in ours.items() if k != "detected_at"} == {
        k: v for k, v in theirs.items() if k not in ("detected_at", "id")}


def test_the_empty_environment_of_clamd(hook: Path, tmp_path: Path) -> None:
    spool = make_spool(tmp_path / "spool")
    # Only the two variables, no PATH or HOME, from / : clamd's VirusEvent.
    r = subprocess.run([str(hook), "--spool", str(spool)], env={"CLAM_VIRUSEVENT_FILENAME": "/x",
                                                               "CLAM_VIRUSEVENT_VIRUSNAME": "V"},
                       cwd="/", capture_output=True, timeout=60, check=False)
    assert r.returncode == 0 and len(os.listdir(spool / "new")) == 1
    r = subprocess.run([str(hook)], env={"SDD_SPOOL": str(spool), "CLAM_VIRUSEVENT_FILENAME": "/y",
                                         "CLAM_VIRUSEVENT_VIRUSNAME": "V"}, capture_output=True, timeout=60,
                       check=False)
    assert r.returncode == 0 and len(os.listdir(spool / "new")) == 2
    r = subprocess.run([str(hook), "--spool", str(spool)], env={}, capture_output=True, timeout=60, check=False)
    assert r.returncode == 2 and b"CLAM_VIRUSEVENT_FILENAME" in r.stderr
    r = subprocess.run([str(hook), "--frobnicate"], env={}, capture_output=True, timeout=60, check=False)
    assert r.returncode == 2 and b"usage" in r.stderr


def _nobody() -> str:
    for name in ("nobody", "daemon"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.skip("no unprivileged user to run the hook as")


@pytest.fixture
def as_other_user() -> str:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the hook as another user")
    return _nobody()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is under a 0700 directory of root's)."""
    d = Path(tempfile.mkdtemp(prefix="sdd-hook-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_an_unwritable_spool_fails_loudly(hook: Path, shared_dir: Path, as_other_user: str) -> None:
    tmp_path = shared_dir
    spool = make_spool(tmp_path / "spool")
    for d in (spool, *spool.iterdir()):
        d.chmod(0o755)  # root's, not writable by the user clamd runs as
    r = run_hook(hook, b"/home/x.exe", b"V", "--spool", str(spool), user=as_other_user)
    assert r.returncode == 1 and r.stderr.startswith(b"sdd-virusevent: cannot create ") and \
        b"Permission denied" in r.stderr, r.stderr
    assert os.listdir(spool / "new") == [] and os.listdir(spool / "tmp") == []
    r = run_hook(hook, b"/home/x.exe", b"V", "--spool", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and b"does not exist" in r.stderr
    (tmp_path / "linked").mkdir()
    os.symlink(spool / "tmp", tmp_path / "linked" / "tmp")
    (tmp_path / "linked" / "new").mkdir()
    r = run_hook(hook, b"/home/x.exe", b"V", "--spool", str(tmp_path / "linked"))
    assert r.returncode == 1 and b"does not exist" in r.stderr  # a symlinked tmp/ is never followed


def test_a_member_of_the_submit_group_writes_into_the_installed_spool_modes(
        hook: Path, shared_dir: Path, as_other_user: str) -> None:
    # systemd/sdd.tmpfiles: root 0710 root:sdd-submit, tmp/ and new/ 1730 root:sdd-submit (no read).
    gid = pwd.getpwnam(as_other_user).pw_gid  # the user's own group plays sdd-submit
    group = grp.getgrgid(gid).gr_name
    spool = make_spool(shared_dir / "spool")
    os.chown(spool, 0, gid)
    spool.chmod(0o710)
    for sub in ("tmp", "new"):
        os.chown(spool / sub, 0, gid)
        (spool / sub).chmod(0o1730)
    for sub in ("cur", "rejected"):
        (spool / sub).chmod(0o700)
    r = run_hook(hook, b"/home/bob/evil.exe", b"V", "--spool", str(spool), user=as_other_user, group=group)
    assert r.returncode == 0, r.stderr
    _, d = only_detection(spool)
    assert d["file_path"] == "/home/bob/evil.exe"


# --- real clamd ---------------------------------------------------------------------------------------------

SAMPLE = b"sdd hook test sample: not a virus, just bytes whose MD5 the test calls one\n" * 30
OUTBREAK_NAMES = [b"plain.exe", b"with space.exe", b"new\nline.exe", b"quote\"back\\slash.exe",
                  b"latin1-\xe9.exe", b"bad-\xff\xfe.exe", "ünï ✓.exe".encode()]


class Clamd:
    """clamd in the foreground on a private socket, with one MD5 signature and VirusEvent set to `event`."""

    def __init__(self, workdir: Path, sample: Path, event: str) -> None:
        self.dir = workdir
        (workdir / "db").mkdir(parents=True)
        sig = subprocess.run([str(SIGTOOL), "--md5", str(sample)], capture_output=True, text=True, timeout=60,
                             check=True).stdout
        (workdir / "db" / "test.hdb").write_text(sig)
        self.conf = workdir / "clamd.conf"
        self.conf.write_text("\n".join([
            "Foreground yes", f"LocalSocket {workdir / 'clamd.sock'}", f"DatabaseDirectory {workdir / 'db'}",
            f"TemporaryDirectory {workdir}", f"LogFile {workdir / 'clamd.log'}", f"VirusEvent {event}", ""]))
        with open(workdir / "clamd.out", "wb") as out:  # clamd's stderr: where the hook's errors go
            self.proc = subprocess.Popen([str(CLAMD), "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while subprocess.run([str(CLAMDSCAN), "-c", str(self.conf), "--ping", "1"], capture_output=True,
                             timeout=60, check=False).returncode != 0:
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)  # poll interval of a deadline-bounded readiness check

    def scan(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(CLAMDSCAN), "-c", str(self.conf), "--no-summary", *args], capture_output=True,
                              timeout=300, check=False)

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.dir / "clamd.log", self.dir / "clamd.out")
                       if p.exists())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


@pytest.fixture
def clamd_dir() -> Iterator[Path]:
    if None in (CLAMD, CLAMDSCAN, SIGTOOL):
        pytest.skip("ClamAV is not installed (tests/system-deps.sh)")
    d = Path(tempfile.mkdtemp(prefix="sdd-hk-", dir="/tmp"))  # clamd's socket path must be short
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


QUARANTINE = """workflow_id: contain
trigger: {type: malware}
steps:
  - step_id: quarantine
    action: quarantine_file
    params: {file_path: "{{ detection.file_path }}"}
"""


def test_real_clamd_runs_the_hook_and_the_daemon_contains_every_file(hook: Path, clamd_dir: Path,
                                                                     tmp_path: Path) -> None:
    sample = clamd_dir / "sample"
    sample.write_bytes(SAMPLE)
    with DaemonProcess(tmp_path, workflows={"contain": QUARANTINE}) as d:
        infected = os.fsencode(d.root) + b"/home/outbreak"
        os.makedirs(infected)
        paths = [infected + b"/" + name for name in OUTBREAK_NAMES]
        for path in paths:
            with open(path, "wb") as fh:
                fh.write(SAMPLE)
        clamd = Clamd(clamd_dir / "clamd", sample, f"{hook} --spool {d.spool}")  # what operations.md says
        try:
            scan = clamd.scan("--multiscan", os.fsdecode(infected))
            assert scan.returncode == 1, scan.stdout + scan.stderr + clamd.log().encode()
        finally:
            clamd.stop()
        assert "sdd-virusevent:" not in clamd.log()
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'completed'") == len(paths),
                   what="every infected file contained")
        assert [p for p in paths if os.path.lexists(p)] == []
        originals = {json.loads((d.state / "vault" / n).read_text())["original_path"]
                     for n in os.listdir(d.state / "vault") if n.endswith(".json")}
        assert {os.fsencode(p) for p in originals} == set(paths)  # the vault knows each exact name


def test_clamd_logs_the_hook_failing_on_an_unwritable_spool(hook: Path, clamd_dir: Path) -> None:
    sample = clamd_dir / "sample"
    sample.write_bytes(SAMPLE)
    target = clamd_dir / "infected.exe"
    target.write_bytes(SAMPLE)
    clamd = Clamd(clamd_dir / "clamd", sample, f"{hook} --spool {clamd_dir / 'missing-spool'}")
    try:
        scan = clamd.scan("--fdpass", str(target))
        assert scan.returncode == 1
    finally:
        clamd.stop()
    assert "sdd-virusevent: spool directory" in clamd.log() and "does not exist" in clamd.log()


def test_sddctl_submit_clamav_also_keeps_non_utf8_names(tmp_path: Path) -> None:
    spool = make_spool(tmp_path / "spool")
    name = b"/tmp/caf\xe9 \xff.exe"
    r = subprocess.run([SDDCTL, "submit", "--clamav", "--spool", str(spool)], capture_output=True, timeout=60,
                       env={b"CLAM_VIRUSEVENT_FILENAME": name, b"CLAM_VIRUSEVENT_VIRUSNAME": b"V",
                            b"PATH": b"/usr/bin:/bin"}, check=False)
    assert r.returncode == 0, r.stderr
    _, d = only_detection(spool)
    assert os.fsencode(d["file_path"]) == name
