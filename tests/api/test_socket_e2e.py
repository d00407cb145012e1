"""The socket's life with real daemons: a second daemon refuses a live socket, a crashed one's stale socket
is replaced on restart, and the file has the configured mode from the start."""

from __future__ import annotations

import os
import stat

from sdd_client.client import Client

from tests.support.daemon import DaemonProcess

from .live import start_daemon


def test_second_daemon_on_a_live_socket_refuses_to_start(tmp_path):
    first = start_daemon(tmp_path / "one")
    try:
        second = DaemonProcess(tmp_path / "two", config_overrides={"paths": {"socket": str(first.socket)}})
        try:
            second.start(wait_ready=False)
            assert second.proc.wait(60) == 1
            assert "already" in second.log()
        finally:
            second.close()
        with Client(first.socket) as c:
            assert c.call("ping") == {"pong": True}
    finally:
        first.close()


def test_stale_socket_of_a_killed_daemon_is_replaced_on_restart(tmp_path):
    d = start_daemon(tmp_path)
    try:
        d.kill()
        assert stat.S_ISSOCK(os.lstat(d.socket).st_mode)  # left behind by kill -9
        d.start()
        with Client(d.socket) as c:
            assert c.call("status")["pid"] == d.pid
        assert stat.S_IMODE(os.lstat(d.socket).st_mode) == 0o660
    finally:
        d.close()
