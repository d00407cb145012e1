"""The shipped system-bus policy (packaging/dbus/org.searchanddestroy.Sdd1.conf), checked strictly.

A private dbus-daemon runs a system-type config that `<include>`s the file (a broken file then makes
dbus-daemon exit 1, whereas in an `<includedir>` it would only be logged). As root, the bridge owns the
name; a client run as `nobody` (setpriv) must not own it, call anything but Properties Get/GetAll,
Introspectable and Peer, or set properties, and must receive the signals.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sdd import hub as ev
from sdd.bus import BUS_NAME, BusBridge
from sdd.hub import EventHub
from tests.bus.conftest import WAIT
from tests.support.dbus import DBUS_DAEMON, PrivateBus, make_socket_dir

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(DBUS_DAEMON is None, reason="dbus-daemon is not installed (see tests/system-deps.sh)"),
]

POLICY = Path(__file__).resolve().parents[2] / "packaging" / "dbus" / "org.searchanddestroy.Sdd1.conf"
CLIENT = Path(__file__).resolve().parent / "policy_client.py"

# The default policy of Debian's /usr/share/dbus-1/system.conf, listening on a temp socket, plus our file.
SYSTEM_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"""


def write_config(directory: Path, policy: Path) -> tuple[Path, Path]:
    socket_path = directory / "system_bus_socket"
    config = directory / "system.conf"
    config.write_text(SYSTEM_CONFIG.format(socket=socket_path, policy=policy))
    return config, socket_path


@pytest.fixture
def system_bus() -> Iterator[PrivateBus]:
    directory = make_socket_dir()
    config, socket_path = write_config(directory, POLICY)
    bus = PrivateBus.start(config, socket_path)
    try:
        yield bus
    finally:
        bus.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_policy_file_is_accepted_by_a_strict_dbus_daemon(system_bus: PrivateBus) -> None:
    assert system_bus.alive and system_bus.address.startswith("unix:path=")


def test_a_broken_policy_file_makes_the_strict_check_fail(tmp_path: Path) -> None:
    """Proves the check above is strict: the same harness refuses a damaged copy of the file."""
    directory = make_socket_dir()
    try:
        broken = directory / "broken.conf"
        broken.write_text(POLICY.read_text().replace("</busconfig>", ""))
        config, _ = write_config(directory, broken)
        done = subprocess.run(
            [str(DBUS_DAEMON), f"--config-file={config}", "--nofork", "--print-address=1"],
            capture_output=True,
            timeout=WAIT,
            check=False,
        )
        assert done.returncode == 1, done
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_policy_names_only_our_bus_name() -> None:
    text = POLICY.read_text()
    assert 'own="org.searchanddestroy.Sdd1"' in text
    assert 'own="*"' not in text and 'send_destination="*"' not in text
    assert "<includedir" not in text


@pytest.fixture
async def bridge_as_root(system_bus: PrivateBus) -> AsyncIterator[tuple[EventHub, BusBridge]]:
    if os.geteuid() != 0:
        pytest.skip("the policy lets only root own the name: run the tests as root to check it")
    hub = EventHub()
    status = {"version": "0.1.0", "state": "running", "active_runs": 2, "queued_detections": 5}
    b = BusBridge(hub, lambda: status, system_bus.address, backoff_initial=0.05)
    await b.start()
    assert await b.wait_connected(WAIT), b.info()
    yield hub, b
    await b.stop()


async def test_root_owns_the_name(bridge_as_root: tuple[EventHub, BusBridge]) -> None:
    _, b = bridge_as_root
    assert b.connected and b.info()["last_error"] is None


async def test_an_unprivileged_user_can_read_and_listen_but_not_own_or_control(
    bridge_as_root: tuple[EventHub, BusBridge], system_bus: PrivateBus
) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot run the client as nobody")
    nobody = pwd.getpwnam("nobody")
    hub, _ = bridge_as_root
    proc = await asyncio.create_subprocess_exec(
        setpriv,
        f"--reuid={nobody.pw_uid}",
        f"--regid={nobody.pw_gid}",
        "--clear-groups",
        sys.executable,
        str(CLIENT),
        system_bus.address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        cwd="/",
    )
    results: dict[str, Any] = {}
    try:

        async def read_until(key: str) -> None:
            assert proc.stdout is not None
            while key not in results:
                line = await proc.stdout.readline()
                if not line:
                    assert proc.stderr is not None
                    err = await proc.stderr.read()
                    raise AssertionError(f"client exited before {key!r}: {results} {err.decode()}")
                results.update(json.loads(line))

        await asyncio.wait_for(read_until("ready"), WAIT)
        hub.publish(ev.RUN_FINISHED, {"run_id": "r1", "workflow_id": "wf", "status": "failed", "seconds": 3.5})
        await asyncio.wait_for(read_until("signal"), WAIT)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert results["uid"] == nobody.pw_uid
    assert results["own"] == "error:org.freedesktop.DBus.Error.AccessDenied"
    assert results["getall"] == "ok"
    assert results["values"] == {"Version": "0.1.0", "State": "running", "ActiveRuns": 2, "QueuedDetections": 5}
    assert results["get"] == "ok" and results["version"] == "0.1.0"
    assert results["set"] == "error:org.freedesktop.DBus.Error.AccessDenied"
    assert results["introspect"] == "ok"
    assert results["other_method"] == "error:org.freedesktop.DBus.Error.AccessDenied"
    assert results["signal"] == ["r1", "wf", "failed", 3.5]
    assert BUS_NAME in POLICY.read_text()
