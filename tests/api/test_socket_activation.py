"""systemd socket activation: the daemon serves the listening socket it inherits (LISTEN_FDS, fd 3) and
binds nothing itself. `systemd-socket-activate` plays systemd's part."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from sdd_client.client import Client

from tests.support.daemon import DaemonProcess, sdd_command

ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is not installed")
def test_daemon_uses_the_inherited_socket(tmp_path):
    d = DaemonProcess(tmp_path)  # only for its directories and config; started by hand below
    runtime = Path(tempfile.mkdtemp(prefix="sdd-act-", dir="/tmp"))
    activated = runtime / "activated.sock"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(d.root),
           "XDG_RUNTIME_DIR": str(runtime)}
    argv = [ACTIVATE, "-l", str(activated), *(f"-E{k}={v}" for k, v in env.items()),
            *sdd_command(), "--config", str(d.config_file)]
    with open(d.log_file, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    try:
        d.wait_for(lambda: activated.exists(), what="systemd-socket-activate listening")
        # The first connection launches the daemon; it waits in the backlog until the daemon accepts it.
        with Client(activated, timeout=120) as client:
            status = client.call("status")
        assert status["pid"] == proc.pid  # exec'd in place: the pid systemd-socket-activate had
        assert not d.socket.exists()  # nothing was bound at paths.socket
        with Client(activated) as client:
            assert client.call("ping") == {"pong": True}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        d.close()
        shutil.rmtree(runtime, ignore_errors=True)
    assert proc.returncode == 0, d.log()
