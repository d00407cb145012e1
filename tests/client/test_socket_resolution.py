"""How sddctl finds the daemon: the contract's order first (--socket, $SDD_SOCKET, the system socket, the
user socket), then — so that `sddctl` just works after `make run` — the run/sdd.sock of the checkout it was
installed from."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import sdd_client
from sdd_client import client as client_module
from sdd_client.client import SYSTEM_SOCKET, checkout_socket, resolve_socket

from tests.api.live import SDDCTL
from tests.support.daemon import DaemonProcess

CHECKOUT = Path(sdd_client.__file__).resolve().parent.parent.parent


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    return sock


def test_a_checkouts_socket_is_found_only_where_it_should_be(tmp_path: Path) -> None:
    checkout = tmp_path / "co"
    package = checkout / "client" / "sdd_client"
    package.mkdir(parents=True)
    (checkout / "run").mkdir()
    assert checkout_socket(package) is None  # no Makefile: not a checkout
    (checkout / "Makefile").write_text("run:\n")
    assert checkout_socket(package) is None  # no socket yet
    (checkout / "run" / "sdd.sock").write_text("not a socket")
    assert checkout_socket(package) is None
    (checkout / "run" / "sdd.sock").unlink()
    with _listen(checkout / "run" / "sdd.sock"):
        assert checkout_socket(package) == checkout / "run" / "sdd.sock"
        if os.geteuid() == 0:  # someone else's socket is not one to trust
            os.chown(checkout / "run" / "sdd.sock", 65534, 65534, follow_symlinks=False)
            assert checkout_socket(package) is None
    assert checkout_socket(tmp_path / "site-packages" / "sdd_client") is None  # an installed client


def test_the_contracts_order_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDD_SOCKET", str(tmp_path / "env.sock"))
    monkeypatch.setattr(client_module, "checkout_socket", lambda: tmp_path / "checkout.sock")
    assert resolve_socket(tmp_path / "flag.sock") == tmp_path / "flag.sock"
    assert resolve_socket() == tmp_path / "env.sock"
    monkeypatch.delenv("SDD_SOCKET")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "sdd").mkdir()
    with _listen(tmp_path / "sdd" / "sdd.sock"):
        expected = SYSTEM_SOCKET if SYSTEM_SOCKET.exists() else tmp_path / "sdd" / "sdd.sock"
        assert resolve_socket() == expected
    (tmp_path / "sdd" / "sdd.sock").unlink()
    assert resolve_socket() == (SYSTEM_SOCKET if SYSTEM_SOCKET.exists() else tmp_path / "checkout.sock")


@pytest.mark.skipif(SYSTEM_SOCKET.exists(), reason="a system sdd runs here: it comes first, as it should")
def test_sddctl_finds_make_runs_daemon_in_its_checkout_without_any_variable(tmp_path: Path) -> None:
    run = CHECKOUT / "run"
    if (run / "sdd.sock").exists():
        pytest.skip(f"a daemon (`make run`?) already uses {run / 'sdd.sock'}")
    created = not run.exists()
    try:
        with DaemonProcess(tmp_path, config_overrides={"paths": {"socket": str(run / "sdd.sock")}}) as d:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SDD_", "XDG_"))}
            env["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(dir=tmp_path)  # no user socket there
            r = subprocess.run([SDDCTL, "status"], env=env, cwd="/", capture_output=True, text=True, timeout=60,
                               check=False)
            assert r.returncode == 0, r.stderr
            assert f"pid {d.pid}" in r.stdout and f"Socket:      {run / 'sdd.sock'}" in r.stdout
    finally:
        if created:
            shutil.rmtree(run, ignore_errors=True)
