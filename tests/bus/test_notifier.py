"""sdd-notifier against a real private bus: the real bridge publishes, a fake notification server records."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from dbus_next import Message
from sdd_client.notifier import Notifier, NotifierOptions

from sdd import hub as ev
from sdd.bus import INTERFACE, OBJECT_PATH, BusBridge
from sdd.hub import EventHub
from tests.bus.conftest import WAIT, close_bus, connect
from tests.support.dbus import FakeNotifications, make_socket_dir, start_session_bus

pytestmark = pytest.mark.timeout(60)

STATUS = {"version": "0.1.0", "state": "running", "active_runs": 0, "queued_detections": 0}


@pytest.fixture
async def hub_and_bridge(private_bus: Any) -> AsyncIterator[tuple[EventHub, BusBridge]]:
    hub = EventHub()
    b = BusBridge(hub, lambda: STATUS, private_bus.address, backoff_initial=0.05, backoff_max=0.3)
    await b.start()
    assert await b.wait_connected(WAIT)
    yield hub, b
    await b.stop()


@pytest.fixture
async def notifier(private_bus: Any) -> AsyncIterator[Notifier]:
    n = Notifier(NotifierOptions(private_bus.address, private_bus.address, backoff_initial=0.05, backoff_max=0.3))
    task = asyncio.create_task(n.run())
    await n.wait_listening(WAIT)
    yield n
    n.stop()
    await asyncio.wait_for(task, WAIT)


def marker(hub: EventHub, text: str = "marker") -> None:
    """A notification published last: once it is shown, everything published before has been handled."""
    hub.publish(ev.NOTIFICATION, {"title": text, "body": "", "urgency": "low"})


async def test_right_notifications_for_the_right_signals(
    hub_and_bridge: tuple[EventHub, BusBridge], notifier: Notifier, fake_notifications: FakeNotifications
) -> None:
    hub, _ = hub_and_bridge
    det = {"detection_id": "d1", "type": "malware", "file_path": "/home/a/x.exe"}
    run = {"run_id": "r1", "workflow_id": "wf", "seconds": 1.5, "error": None}
    hub.publish(ev.DETECTION_RECEIVED, {**det, "severity": "critical"})  # shown
    hub.publish(ev.DETECTION_RECEIVED, {**det, "severity": "low"})
    hub.publish(ev.DETECTION_RECEIVED, {**det, "severity": "high"})  # shown
    hub.publish(ev.RUN_STARTED, {"run_id": "r1", "workflow_id": "wf", "detection_id": "d1"})
    hub.publish(ev.STEP_FINISHED, {"run_id": "r1", "step_id": "s", "status": "failed", "seconds": 1.0})
    for status in ("completed", "failed", "rolled_back", "interrupted", "cancelled"):  # 3 shown
        hub.publish(ev.RUN_FINISHED, {**run, "status": status})
    for urgency in ("low", "normal", "critical", "weird"):  # 4 shown
        hub.publish(ev.NOTIFICATION, {"title": f"T-{urgency}", "body": "B", "urgency": urgency})
    marker(hub)

    calls = await fake_notifications.wait_calls(10)
    summaries = [c.summary for c in calls]
    assert summaries == [
        "sdd: critical malware detected",
        "sdd: high malware detected",
        "sdd: wf failed",
        "sdd: wf was rolled back",
        "sdd: wf was interrupted",
        "T-low",
        "T-normal",
        "T-critical",
        "T-weird",
        "marker",
    ]
    assert [c.hints["urgency"] for c in calls] == [2, 1, 2, 1, 2, 0, 1, 2, 1, 0]
    assert all(c.app_name == "sdd" and c.actions == [] and c.expire_timeout == -1 for c in calls)
    assert calls[0].body == "/home/a/x.exe"
    assert calls[2].body == "Run r1 failed after 1.5 s."


async def test_body_markup_is_escaped_only_for_servers_that_interpret_it(
    hub_and_bridge: tuple[EventHub, BusBridge], notifier: Notifier, fake_notifications: FakeNotifications
) -> None:
    hub, _ = hub_and_bridge
    hub.publish(ev.NOTIFICATION, {"title": "<i>t</i>", "body": "<b>x</b> & y", "urgency": "normal"})
    (call,) = await fake_notifications.wait_calls(1)
    assert call.summary == "<i>t</i>"  # the summary is never markup
    assert call.body == "&lt;b&gt;x&lt;/b&gt; &amp; y"


async def test_plain_servers_get_the_text_as_is(
    private_bus: Any, hub_and_bridge: tuple[EventHub, BusBridge]
) -> None:
    server = FakeNotifications(private_bus.address, capabilities=["body"])
    await server.start()
    n = Notifier(NotifierOptions(private_bus.address, private_bus.address, max_notifications=1))
    task = asyncio.create_task(n.run())
    try:
        await n.wait_listening(WAIT)
        hub_and_bridge[0].publish(ev.NOTIFICATION, {"title": "t", "body": "a < b & c", "urgency": "low"})
        (call,) = await server.wait_calls(1)
        assert call.body == "a < b & c"
        await asyncio.wait_for(task, WAIT)  # --max-notifications 1: it ends by itself
    finally:
        n.stop()
        await asyncio.wait_for(task, WAIT)
        await server.stop()


async def test_signals_from_anyone_but_the_name_owner_are_ignored(
    private_bus: Any,
    hub_and_bridge: tuple[EventHub, BusBridge],
    notifier: Notifier,
    fake_notifications: FakeNotifications,
) -> None:
    spoofer = await connect(private_bus.address)
    try:
        fake = ["Pay now", "Your files are encrypted: call 555-0100", "critical"]
        # Broadcast with the daemon's interface and path, from another connection.
        spoofer.send(Message.new_signal(OBJECT_PATH, INTERFACE, "Notification", "sss", fake))
        # Unicast straight to the notifier's connection: match rules do not filter these.
        unicast = Message.new_signal(OBJECT_PATH, INTERFACE, "Notification", "sss", fake)
        unicast.destination = notifier.unique_name
        spoofer.send(unicast)
        marker(hub_and_bridge[0])
        calls = await fake_notifications.wait_calls(1)
        assert [c.summary for c in calls] == ["marker"]
    finally:
        close_bus(spoofer)


async def test_a_busy_notification_server_costs_bounded_memory_and_one_summary(
    private_bus: Any, hub_and_bridge: tuple[EventHub, BusBridge], notifier: Notifier
) -> None:
    from sdd_client.notifier import QUEUE_SIZE

    hub, _ = hub_and_bridge
    server = FakeNotifications(private_bus.address, gate=asyncio.Event())
    await server.start()
    try:
        marker(hub, "first")
        await server.wait_calls(1)  # the notifier now waits for the server's reply
        extra = 10
        for i in range(QUEUE_SIZE + extra):
            marker(hub, f"n{i}")
        await notifier.wait_until(lambda: notifier.received == 1 + QUEUE_SIZE + extra, WAIT)
        assert notifier.dropped == extra  # the queue stayed at QUEUE_SIZE
        assert server.gate is not None
        server.gate.set()
        calls = await server.wait_calls(1 + QUEUE_SIZE + 1)
        assert [c.summary for c in calls[: QUEUE_SIZE + 1]] == ["first"] + [f"n{i}" for i in range(QUEUE_SIZE)]
        assert calls[-1].summary == "sdd: more events"
        assert calls[-1].body == f"{extra} more sdd notifications were not shown."
    finally:
        if server.gate is not None:
            server.gate.set()
        await server.stop()


async def test_keeps_working_across_a_daemon_restart(
    private_bus: Any, notifier: Notifier, fake_notifications: FakeNotifications
) -> None:
    hub = EventHub()
    for generation in range(2):
        b = BusBridge(hub, lambda: STATUS, private_bus.address)
        await b.start()
        try:
            assert await b.wait_connected(WAIT)
            marker(hub, f"daemon {generation}")
            await fake_notifications.wait_calls(generation + 1)
        finally:
            await b.stop()
    assert [c.summary for c in fake_notifications.calls] == ["daemon 0", "daemon 1"]


async def test_keeps_working_across_a_bus_restart(
    private_bus: Any, hub_and_bridge: tuple[EventHub, BusBridge], notifier: Notifier
) -> None:
    hub, bridge = hub_and_bridge
    server = await FakeNotifications(private_bus.address).start()
    try:
        marker(hub, "before")
        await server.wait_calls(1)
    finally:
        await server.stop()

    private_bus.restart()
    server = await FakeNotifications(private_bus.address).start()
    try:
        await notifier.wait_listening(WAIT, connections=2)
        assert await bridge.wait_connected(WAIT, connections=2)
        marker(hub, "after")
        (call,) = await server.wait_calls(1)
        assert call.summary == "after"
    finally:
        await server.stop()


async def test_started_before_the_daemon_it_shows_its_signals_once_it_appears(
    private_bus: Any, notifier: Notifier, fake_notifications: FakeNotifications
) -> None:
    hub = EventHub()
    b = BusBridge(hub, lambda: STATUS, private_bus.address)
    await b.start()
    try:
        hub.publish(ev.RUN_FINISHED, {"run_id": "r", "workflow_id": "wf", "status": "failed", "seconds": 1})
        (call,) = await fake_notifications.wait_calls(1)
        assert call.summary == "sdd: wf failed"
    finally:
        await b.stop()


async def test_started_before_its_bus_it_listens_once_the_bus_appears(tmp_path: Path) -> None:
    directory = make_socket_dir()
    address = f"unix:path={directory}/bus"
    n = Notifier(NotifierOptions(address, address, backoff_initial=0.05, backoff_max=0.2))
    task = asyncio.create_task(n.run())
    bus = None
    server = None
    try:
        assert not n.listening
        bus = start_session_bus(directory)
        await n.wait_listening(WAIT)
        server = await FakeNotifications(bus.address).start()
        hub = EventHub()
        b = BusBridge(hub, lambda: STATUS, bus.address)
        await b.start()
        try:
            marker(hub, "late bus")
            (call,) = await server.wait_calls(1)
            assert call.summary == "late bus"
        finally:
            await b.stop()
    finally:
        n.stop()
        await asyncio.wait_for(task, WAIT)
        if server is not None:
            await server.stop()
        if bus is not None:
            bus.stop()
        shutil.rmtree(directory, ignore_errors=True)


# --- the console script ---------------------------------------------------------------------------------


def notifier_command() -> list[str]:
    script = Path(sys.executable).with_name("sdd-notifier")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sdd_client.notifier"]


async def start_cli(*args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBUS_")}
    return await asyncio.create_subprocess_exec(
        *notifier_command(), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL, env=env,
    )


async def wait_stderr_line(proc: asyncio.subprocess.Process, needle: str) -> None:
    assert proc.stderr is not None

    async def _wait() -> None:
        seen = []
        while True:
            line = await proc.stderr.readline()  # type: ignore[union-attr]
            if not line:
                raise AssertionError(f"sdd-notifier exited before logging {needle!r}: {seen}")
            seen.append(line.decode())
            if needle in seen[-1]:
                return

    await asyncio.wait_for(_wait(), WAIT)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_cli_shows_notifications_and_exits_cleanly_on_a_signal(
    private_bus: Any, hub_and_bridge: tuple[EventHub, BusBridge], fake_notifications: FakeNotifications,
    signum: int,
) -> None:
    proc = await start_cli("--address", private_bus.address, "--notify-address", private_bus.address, "-v")
    try:
        await wait_stderr_line(proc, "listening for sdd signals")
        hub_and_bridge[0].publish(ev.NOTIFICATION, {"title": "from cli", "body": "b", "urgency": "critical"})
        (call,) = await fake_notifications.wait_calls(1)
        assert call.summary == "from cli" and call.hints["urgency"] == 2
        proc.send_signal(signum)
        try:
            assert await asyncio.wait_for(proc.wait(), WAIT) == 0
        except TimeoutError:
            proc.send_signal(signal.SIGABRT)
            await proc.wait()
            raise AssertionError((await proc.stderr.read()).decode())  # type: ignore[union-attr]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cli_max_notifications_exits_by_itself(
    private_bus: Any, hub_and_bridge: tuple[EventHub, BusBridge], fake_notifications: FakeNotifications
) -> None:
    proc = await start_cli(
        "--address", private_bus.address, "--notify-address", private_bus.address, "--max-notifications", "1", "-v"
    )
    try:
        await wait_stderr_line(proc, "listening for sdd signals")
        hub_and_bridge[0].publish(ev.RUN_FINISHED, {"run_id": "r", "workflow_id": "wf", "status": "rolled_back"})
        await fake_notifications.wait_calls(1)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cli_rejects_a_bad_address() -> None:
    proc = await start_cli("--address", "nonsense", "--notify-address", "unix:path=/nonexistent")
    _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 2
    assert b"--address" in err and b"nonsense" in err


async def test_cli_without_a_session_bus_says_so() -> None:
    if "XDG_RUNTIME_DIR" in os.environ:
        pytest.skip("XDG_RUNTIME_DIR is set here, so a session bus address is derived from it")
    proc = await start_cli("--address", "unix:path=/nonexistent")  # no DBUS_SESSION_BUS_ADDRESS
    _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 2
    assert b"no session bus" in err
