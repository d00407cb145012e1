"""run_scan with a real clamscan and a signature database made by the test; update_definitions."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sdd.engine import ActionError, InvalidParams, NotFound

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
    assert res["exit_code"] == 1 and res["threats_found"] == 1
    assert res["findings"] == [{"file": str(bad), "signature": "Sdd.Test.Sample.UNOFFICIAL"}]


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
                                         (None, InvalidParams), ("/nonexistent-sdd-path", NotFound),
                                         ("-r", InvalidParams)])
async def test_scan_refuses_bad_paths(env: Env, path: object, error: type) -> None:
    params = {} if path is None else {"path": path}
    with pytest.raises(error):
        await env.call("run_scan", **params)


async def test_scan_type_is_checked(env: Env) -> None:
    with pytest.raises(InvalidParams, match="scan_type"):
        await env.call("run_scan", path="/tmp", scan_type="; rm -rf /")


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
def clamd(env: Env, infected: tuple[Path, Path]):
    binary = shutil.which("clamd") or ("/usr/sbin/clamd" if Path("/usr/sbin/clamd").exists() else None)
    if binary is None or not shutil.which("clamdscan"):
        pytest.skip("clamd/clamdscan not installed (make system-deps installs them as root)")
    sock = env.tmp / "clamd.sock"
    conf = env.tmp / "clamd.conf"
    conf.write_text(f"Foreground yes\nLocalSocket {sock}\nDatabaseDirectory {env.tmp / 'db'}\n"
                    f"LogFile {env.tmp / 'clamd.log'}\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import socket
        import time
        deadline = time.monotonic() + 30
        while True:  # ready when the socket accepts a connection (it appears once the db is loaded)
            assert proc.poll() is None, "clamd exited"
            assert time.monotonic() < deadline, "clamd did not come up"
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(sock))
                break
            except OSError:
                time.sleep(0.02)
        yield conf
    finally:
        proc.terminate()
        proc.wait(10)


async def test_scan_with_clamdscan_fdpass(env: Env, infected: tuple[Path, Path], clamd: Path) -> None:
    scan, bad = infected
    env.configure(scanner=("clamdscan", "-c", str(clamd)))
    res = await env.call("run_scan", path=str(scan))
    assert res["threats_found"] == 1 and res["findings"][0]["file"] == str(bad)
    assert res["scanner"] == "clamdscan"
