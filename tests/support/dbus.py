"""Private D-Bus for tests: a real `dbus-daemon` on a temp unix socket, and a fake notification server.

`PrivateBus.start(dir)` runs `dbus-daemon --nofork` as our own child (so it is stopped through its Popen
handle, never by a bare pid) and returns once the daemon has printed its address, i.e. is listening.
`restart()` starts a fresh daemon on the same socket path, which is how the reconnect tests simulate a bus
coming back. `FakeNotifications` implements `org.freedesktop.Notifications` on such a bus and records every
`Notify` call so tests can await them.

Fixtures: `private_bus` (session-type bus with an allow-all policy) and `fake_notifications` (on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pytest

DBUS_DAEMON = shutil.which("dbus-daemon")
DBUS_MONITOR = shutil.which("dbus-monitor")

needs_dbus = pytest.mark.skipif(
    DBUS_DAEMON is None, reason="dbus-daemon is not installed (apt-get install dbus-daemon; see tests/system-deps.sh)"
)

# A session-type bus that lets everyone own, send, receive and monitor: the tests of the bridge and the
# notifier are about sdd's behaviour, not about policy (test_policy.py uses a system-like config instead).
SESSION_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

START_TIMEOUT = 10.0


@dataclass
class PrivateBus:
    """One running dbus-daemon child; `address` is what clients connect to."""

    config: Path
    socket_path: Path
    address: str  # unix:path=SOCKET: stable across restarts on the same path
    proc: subprocess.Popen[bytes]
    printed_address: str = ""  # as dbus-daemon printed it, with this instance's guid

    @classmethod
    def start(cls, config: Path, socket_path: Path) -> PrivateBus:
        if DBUS_DAEMON is None:
            raise RuntimeError("dbus-daemon is not installed")
        proc = subprocess.Popen(
            [DBUS_DAEMON, f"--config-file={config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        line = _readline_with_deadline(proc, START_TIMEOUT)
        if not line:
            proc.kill()
            _, err = proc.communicate(timeout=START_TIMEOUT)
            raise RuntimeError(
                f"dbus-daemon did not start with {config} (exit {proc.returncode}): {err.decode(errors='replace')}"
            )
        return cls(config, socket_path, f"unix:path={socket_path}", proc, line.strip())

    def stop(self) -> None:
        """Stop the daemon and wait for it; idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=START_TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        # dbus-daemon removes its socket on a clean exit; make sure a restart can bind the path again.
        if self.socket_path.exists():
            self.socket_path.unlink()

    def restart(self) -> PrivateBus:
        """Stop this daemon and start a new one on the same socket path (same address for clients)."""
        self.stop()
        return PrivateBus.start(self.config, self.socket_path)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


def _readline_with_deadline(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Read dbus-daemon's first stdout line (its address) without hanging when it dies or stalls."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        loop_deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            remaining = loop_deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                return ""
            chunk = os.read(fd, 4096)
            if not chunk:
                return ""
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()


def make_socket_dir() -> Path:
    """A short, world-traversable directory for a bus socket (unix paths are limited to 108 bytes, and the
    policy tests connect as `nobody`)."""
    d = Path(tempfile.mkdtemp(prefix="sdd-bus-", dir="/tmp"))
    d.chmod(0o755)
    return d


def start_session_bus(directory: Path) -> PrivateBus:
    socket_path = directory / "bus"
    config = directory / "session.conf"
    config.write_text(SESSION_CONFIG.format(socket=socket_path))
    return PrivateBus.start(config, socket_path)


@pytest.fixture
def private_bus() -> Iterator[_BusHandle]:
    if DBUS_DAEMON is None:
        pytest.skip("dbus-daemon is not installed (apt-get install dbus-daemon; see tests/system-deps.sh)")
    directory = make_socket_dir()
    holder = [start_session_bus(directory)]
    bus = _BusHandle(holder)
    try:
        yield bus
    finally:
        holder[0].stop()
        shutil.rmtree(directory, ignore_errors=True)


class _BusHandle(str):
    """What the `private_bus` fixture yields: the bus address (this object *is* that string, and
    `.address` too), plus `restart()`/`stop()` of the dbus-daemon behind it. The address names only the
    socket path, so it stays valid across restarts, as a system bus address does."""

    _holder: list[PrivateBus]

    def __new__(cls, holder: list[PrivateBus]) -> Self:
        handle = super().__new__(cls, holder[0].address)
        handle._holder = holder
        return handle

    @property
    def address(self) -> str:
        return self._holder[0].address

    @property
    def printed_address(self) -> str:
        """The address as dbus-daemon printed it (with its guid, which changes on restart)."""
        return self._holder[0].printed_address

    @property
    def socket_path(self) -> Path:
        return self._holder[0].socket_path

    @property
    def alive(self) -> bool:
        return self._holder[0].alive

    def stop(self) -> None:
        self._holder[0].stop()

    def restart(self) -> _BusHandle:
        cur = self._holder[0]
        cur.stop()
        self._holder[0] = PrivateBus.start(cur.config, cur.socket_path)
        return self

    def start_again(self) -> _BusHandle:
        cur = self._holder[0]
        self._holder[0] = PrivateBus.start(cur.config, cur.socket_path)
        return self


# --- dbus-monitor ---------------------------------------------------------------------------------------


class MonitorReader:
    """dbus-monitor whose output is read line by line in the event loop, so a test can wait for a line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, address: str, *match_rules: str) -> MonitorReader:
        if DBUS_MONITOR is None:
            raise RuntimeError("dbus-monitor is not installed")
        proc = await asyncio.create_subprocess_exec(
            DBUS_MONITOR,
            "--address",
            address,
            *match_rules,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )
        reader = cls(proc)
        # A monitor loses its unique name once it is attached: from that line on it sees every message.
        await reader.wait_for("member=NameLost")
        return reader

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                self._changed.set()
                return
            self.lines.append(line.decode(errors="replace").rstrip("\n"))
            self._changed.set()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def wait_for(self, needle: str, timeout: float = START_TIMEOUT) -> str:
        """Wait until `needle` appears in the output; returns the whole output so far."""

        async def _wait() -> str:
            while needle not in self.text:
                if self._task.done():
                    raise AssertionError(f"dbus-monitor exited before printing {needle!r}:\n{self.text}")
                self._changed.clear()
                await self._changed.wait()
            return self.text

        return await asyncio.wait_for(_wait(), timeout)

    async def stop(self) -> str:
        if self.proc.returncode is None:
            self.proc.terminate()
        await asyncio.wait_for(self.proc.wait(), START_TIMEOUT)
        await asyncio.wait_for(self._task, START_TIMEOUT)
        return self.text


# --- fake org.freedesktop.Notifications ------------------------------------------------------------------


@dataclass(frozen=True)
class NotifyCall:
    app_name: str
    replaces_id: int
    app_icon: str
    summary: str
    body: str
    actions: list[str]
    hints: dict[str, Any]  # Variant values unwrapped
    expire_timeout: int


@dataclass
class FakeNotifications:
    """A desktop notification server on a private bus that records `Notify` calls."""

    address: str
    calls: list[NotifyCall] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=lambda: ["body", "body-markup"])
    gate: asyncio.Event | None = None  # when set to an Event, Notify replies only once it is set
    _bus: Any = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> FakeNotifications:
        from dbus_next.aio import MessageBus

        self._bus = await MessageBus(bus_address=self.address).connect()
        self._bus._disconnect_future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._bus.export("/org/freedesktop/Notifications", _make_interface(self))
        await self._bus.request_name("org.freedesktop.Notifications")
        return self

    def record(self, call: NotifyCall) -> int:
        self.calls.append(call)
        self._changed.set()
        return len(self.calls)

    async def wait_calls(self, n: int, timeout: float = START_TIMEOUT) -> list[NotifyCall]:
        async def _wait() -> list[NotifyCall]:
            while len(self.calls) < n:
                self._changed.clear()
                await self._changed.wait()
            return list(self.calls)

        return await asyncio.wait_for(_wait(), timeout)

    async def stop(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            with contextlib.suppress(Exception):  # a bus that died first reports its error here
                await asyncio.wait_for(self._bus.wait_for_disconnect(), START_TIMEOUT)
            # dbus-next 0.2.3 may leave the socket open after disconnect(): close it ourselves, after taking
            # the fd out of the event loop (a closed fd left there hangs the next socket given its number).
            loop = self._bus._loop
            if not loop.is_closed():
                loop.remove_reader(self._bus._fd)
                loop.remove_writer(self._bus._fd)
            for attr in ("_stream", "_sock"):
                obj = getattr(self._bus, attr, None)
                if obj is not None:
                    with contextlib.suppress(OSError):
                        obj.close()
            self._bus = None


def _dbus_types(returns: str = "", **params: str) -> Any:
    """Signatures for dbus-next, set as annotations (quoted "s" annotations upset linters)."""

    def decorate(fn: Any) -> Any:
        fn.__annotations__ = {**params, **({"return": returns} if returns else {})}
        return fn

    return decorate


def _make_interface(server: FakeNotifications) -> Any:
    from dbus_next.service import ServiceInterface, method

    class Notifications(ServiceInterface):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__("org.freedesktop.Notifications")

        @method()
        @_dbus_types(
            "u",
            app_name="s",
            replaces_id="u",
            app_icon="s",
            summary="s",
            body="s",
            actions="as",
            hints="a{sv}",
            expire_timeout="i",
        )
        async def Notify(self, app_name, replaces_id, app_icon, summary, body, actions, hints, expire_timeout):  # type: ignore[no-untyped-def]
            unwrapped = {k: v.value for k, v in hints.items()}
            n = server.record(
                NotifyCall(app_name, replaces_id, app_icon, summary, body, list(actions), unwrapped, expire_timeout)
            )
            if server.gate is not None:
                await server.gate.wait()  # a busy server: the reply waits until the test opens the gate
            return n

        @method()
        @_dbus_types("as")
        def GetCapabilities(self):  # type: ignore[no-untyped-def]
            return list(server.capabilities)

        @method()
        @_dbus_types("ssss")
        def GetServerInformation(self):  # type: ignore[no-untyped-def]
            return ["sdd-test", "sdd", "1.0", "1.2"]

        @method()
        @_dbus_types(notification_id="u")
        def CloseNotification(self, notification_id):  # type: ignore[no-untyped-def]
            return None

    return Notifications()


@pytest.fixture
async def fake_notifications(private_bus: _BusHandle) -> AsyncIterator[FakeNotifications]:
    server = await FakeNotifications(private_bus.address).start()
    try:
        yield server
    finally:
        await server.stop()
