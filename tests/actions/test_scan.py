"""run_scan with a real clamscan and a signature database made by the test; update_definitions."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from sdd.engine import ActionError, Forbidden, InvalidParams, NotFound

from .conftest import Env

EICAR_LIKE = b"sdd-test-malware-sample-" + b"x" * 100

needs_clamscan = pytest.mark.skipif(not (shutil.which("clamscan") and shutil.which("sigtool")),
                                    reason="clamscan/sigtool not installed (make system-deps installs them as root)")


@pytest.fixture
def infected(env: Env) -> tuple[Path, Path]:
    scan = env.root / "downloads"
    (scan / "sub").mkdir(parents=True)
    bad = scan / "sub" / "invoice: 2026.exe"  # ': ' in the name must not confuse the parser
    bad.write_bytes(EICAR_LIKE)
    (scan / "clean.txt").write_text("hello")
    db = env.tmp / "db"
    db.mkdir()
    sig = subprocess.run(["sigtool", "--md5", str(bad)], check=True, capture_output=True).stdout
    (db / "test.hdb").write_bytes(sig.replace(b"invoice: 2026.exe", b"Sdd.Test.Sample"))
    env.configure(scanner=("clamscan", "-d", str(db)))
    return scan, bad


@needs_clamscan
async def test_scan_finds_the_sample(env: Env, infected: tuple[Path, Path]) -> None:
    scan, bad = infected
    res = await env.call("run_scan", path=str(scan), scan_type="quick")
    assert res["exit_code"] == 1 and res["threats_found"] == 1 and res["complete"]
    assert res["findings"] == [{"file": str(bad), "signature": "Sdd.Test.Sample.UNOFFICIAL"}]
    assert res["summary"]["scanned_files"] == 2


@needs_clamscan
async def test_clean_scan(env: Env, infected: tuple[Path, Path]) -> None:
    scan, bad = infected
    bad.unlink()
    res = await env.call("run_scan", path=str(scan))
    assert res["exit_code"] == 0 and res["threats_found"] == 0 and res["clean"]


@needs_clamscan
async def test_scanner_error_fails_the_step(env: Env, infected: tuple[Path, Path]) -> None:
    scan, _ = infected
    empty = env.tmp / "empty-db"
    empty.mkdir()
    env.configure(scanner=("clamscan", "-d", str(empty)))
    with pytest.raises(ActionError, match="exited with status 2"):
        await env.call("run_scan", path=str(scan))


@pytest.mark.parametrize("path, error", [("relative/dir", InvalidParams), ("/tmp/../etc", InvalidParams),
                                         (None, InvalidParams), ("-r", InvalidParams)])
async def test_scan_refuses_bad_paths(env: Env, path: object, error: type) -> None:
    params = {} if path is None else {"path": path}
    with pytest.raises(error):
        await env.call("run_scan", **params)


async def test_scan_never_reads_outside_the_allowed_roots(env: Env) -> None:
    for outside in ("/etc", "/usr/bin", str(env.outside)):
        with pytest.raises(Forbidden, match="outside the allowed roots"):
            await env.call("run_scan", path=outside)
    with pytest.raises(NotFound):
        await env.call("run_scan", path=str(env.root / "missing"))


async def test_scan_type_is_checked(env: Env) -> None:
    with pytest.raises(InvalidParams, match="scan_type"):
        await env.call("run_scan", path=str(env.root), scan_type="; rm -rf /")


async def test_update_definitions_success_and_failure(env: Env) -> None:
    env.configure(updater=(sys.executable, "-c", "print('Database updated (main.cvd)')"))
    res = await env.call("update_definitions")
    assert res["updated"] and "Database updated" in res["output_tail"]
    env.configure(updater=(sys.executable, "-c", "import sys; print('Can\\'t connect'); sys.exit(1)"))
    with pytest.raises(ActionError, match="status 1: Can't connect") as err:
        await env.call("update_definitions")
    assert err.value.retryable


async def test_update_definitions_missing_program(env: Env) -> None:
    env.configure(updater=("/nonexistent/freshclam",))
    with pytest.raises(NotFound, match="not found"):
        await env.call("update_definitions")


@pytest.fixture
def clamd_at(env: Env) -> Iterator[Any]:
    """`clamd_at(db)` starts clamd in the foreground on a signature directory; returns its clamd.conf."""
    binary = shutil.which("clamd") or ("/usr/sbin/clamd" if Path("/usr/sbin/clamd").exists() else None)
    if binary is None:
        pytest.skip("clamd not installed (make system-deps installs it as root)")
    started: list[subprocess.Popen[bytes]] = []
    dirs: list[Path] = []

    def start(db: Path) -> Path:
        run = Path(tempfile.mkdtemp(prefix="sdd-clamd-", dir="/tmp"))  # a unix socket path: 108 bytes at most
        dirs.append(run)
        sock, conf = run / "clamd.sock", run / "clamd.conf"
        conf.write_text(f"Foreground yes\nLocalSocket {sock}\nDatabaseDirectory {db}\nLogFile {run / 'log'}\n")
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(proc)
        deadline = time.monotonic() + 30
        while True:  # ready when the socket accepts a connection (it appears once the db is loaded)
            assert proc.poll() is None, "clamd exited"
            assert time.monotonic() < deadline, "clamd did not come up"
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(sock))
                return conf
            except OSError:
                time.sleep(0.02)  # poll interval of a deadline-bounded readiness check
    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def clamd(env: Env, infected: tuple[Path, Path], clamd_at: Any) -> Path:
    return clamd_at(env.tmp / "db")


async def test_scan_with_clamd_passes_descriptors(env: Env, infected: tuple[Path, Path], clamd: Path) -> None:
    scan, bad = infected
    env.configure(scanner=("clamdscan", "-c", str(clamd)))
    res = await env.call("run_scan", path=str(scan))
    assert res["threats_found"] == 1 and res["findings"] == [{"file": str(bad),
                                                              "signature": "Sdd.Test.Sample.UNOFFICIAL"}]
    assert res["scanner"].startswith("clamd:") and res["exit_code"] is None
    assert res["summary"]["scanned_files"] == 2 and res["complete"]


# -- a file name cannot forge a finding; nothing outside the roots is read ------------------------------------

@pytest.fixture
def forged(env: Env) -> dict[str, Path]:
    """A scanned directory with an infected file whose name reads like a clamscan line about a victim's file,
    a symlink and a symlinked directory to infected files outside the roots, and a FIFO."""
    scan = env.root / "downloads"
    scan.mkdir()
    victim = env.root / "home" / "victim" / "clean.txt"
    victim.parent.mkdir(parents=True)
    victim.write_text("the victim's clean file")
    # Names cannot hold "/", so the forged line is a path of directories: x\n/…/victim/clean.txt: Eicar FOUND
    attack = scan / f"x\n{victim}: Eicar FOUND"
    attack.parent.mkdir(parents=True)
    attack.write_bytes(EICAR_LIKE)
    outside = env.outside / "infected.bin"
    outside.write_bytes(EICAR_LIKE + b"outside")
    (env.outside / "sub").mkdir()
    (env.outside / "sub" / "also.bin").write_bytes(EICAR_LIKE + b"outside")
    os.symlink(outside, scan / "link-to-outside.bin")
    os.symlink(env.outside / "sub", scan / "dir-link")
    os.mkfifo(scan / "pipe")
    db = env.tmp / "db"
    db.mkdir(exist_ok=True)
    # sigtool --md5's format (MD5:size:name), written here: sigtool would put the hostile name in the line.
    (db / "test.hdb").write_text("".join(f"{hashlib.md5(p.read_bytes()).hexdigest()}:{p.stat().st_size}:"
                                         f"Sdd.Test.Sample\n" for p in (attack, outside)))
    return {"scan": scan, "attack": attack, "victim": victim, "db": db}


def _check_forged(res: dict, forged: dict[str, Path]) -> None:
    assert res["findings"] == [{"file": str(forged["attack"]), "signature": "Sdd.Test.Sample.UNOFFICIAL"}]
    assert res["threats_found"] == 1 and forged["attack"].is_file() and "\n" in res["findings"][0]["file"]
    assert all(f["file"] != str(forged["victim"]) for f in res["findings"])
    assert res["summary"]["skipped_symlinks"] == 2 and res["summary"]["skipped_special"] == 1


@needs_clamscan
async def test_clamscan_findings_name_the_real_file_never_a_forged_line(env: Env, forged: dict[str, Path]) -> None:
    env.configure(scanner=("clamscan", "-d", str(forged["db"])))
    _check_forged(await env.call("run_scan", path=str(forged["scan"])), forged)


async def test_clamd_findings_name_the_real_file_never_a_forged_line(env: Env, forged: dict[str, Path],
                                                                   clamd_at: Any) -> None:
    env.configure(scanner=("clamdscan", "-c", str(clamd_at(forged["db"]))))
    _check_forged(await env.call("run_scan", path=str(forged["scan"])), forged)


FAKE_SCANNER = """
import sys
for arg in sys.argv[1:]:
    with open(arg, 'rb') as fh:
        if b'EVIL' in fh.read():
            print(arg + ': Fake.Evil FOUND')
"""


async def test_any_program_gets_descriptors_and_its_exact_lines_are_read(env: Env) -> None:
    (env.root / "a").mkdir()
    (env.root / "a" / "evil one.bin").write_bytes(b"EVIL")
    (env.root / "a" / "fine.txt").write_bytes(b"fine")
    env.configure(scanner=(sys.executable, "-c", FAKE_SCANNER))
    res = await env.call("run_scan", path=str(env.root / "a"))
    assert res["findings"] == [{"file": str(env.root / "a" / "evil one.bin"), "signature": "Fake.Evil"}]
    assert res["summary"]["scanned_files"] == 2


async def test_output_naming_files_the_scanner_was_not_given_is_refused(env: Env) -> None:
    (env.root / "x.bin").write_bytes(b"x")
    env.configure(scanner=(sys.executable, "-c", "print('/home/victim/clean.txt: Eicar FOUND')"))
    with pytest.raises(ActionError, match="names none of the files it was given; refusing to guess"):
        await env.call("run_scan", path=str(env.root))


async def test_scanning_a_symlink_is_refused(env: Env) -> None:
    os.symlink(env.outside, env.root / "link")
    with pytest.raises(Forbidden, match="symbolic link"):
        await env.call("run_scan", path=str(env.root / "link"))


async def test_a_scan_that_outlives_its_timeout_is_stopped(env: Env) -> None:
    (env.root / "x.bin").write_bytes(b"x")
    marker = env.tmp / "scanner.pid"
    code = f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    env.configure(scanner=(sys.executable, "-c", code))
    with pytest.raises(ActionError, match="timed out"):
        await env.call("run_scan", path=str(env.root), timeout=1)
    assert not psutil.pid_exists(int(marker.read_text())), "the scanner outlived its step"
