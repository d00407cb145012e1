"""The D-Bus bridge against a real private dbus-daemon, fed by a real EventHub."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus

from sdd import hub as ev
from sdd.bus import BUS_NAME, INTERFACE, OBJECT_PATH, BridgeState, BusBridge
from sdd.hub import EventHub
from tests.bus.conftest import WAIT, SignalCollector, close_bus, connect
from tests.support.dbus import MonitorReader, make_socket_dir, start_session_bus

pytestmark = pytest.mark.timeout(60)


class FakeStatus:
    """The daemon's status(): a dict the test changes, as the daemon's counters would."""

    def __init__(self) -> None:
        self.value: dict[str, Any] = {
            "version": "0.1.0",
            "state": "running",
            "active_runs": 0,
            "queued_detections": 0,
            "pid": 1,
        }

    def __call__(self) -> dict[str, Any]:
        return dict(self.value)


@pytest.fixture
def status() -> FakeStatus:
    return FakeStatus()


@pytest.fixture
async def bridge(private_bus: Any, status: FakeStatus) -> AsyncIterator[tuple[EventHub, BusBridge]]:
    hub = EventHub()
    b = BusBridge(hub, status, private_bus.address, backoff_initial=0.05, backoff_max=0.5)
    await b.start()
    assert await b.wait_connected(WAIT)
    yield hub, b
    await b.stop()


async def properties_call(bus: MessageBus, member: str, signature: str, body: list[Any]) -> Message:
    reply = await bus.call(
        Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface="org.freedesktop.DBus.Properties",
            member=member,
            signature=signature,
            body=body,
        )
    )
    assert reply is not None
    return reply


EVENTS: list[tuple[str, dict[str, Any], str, str, list[Any]]] = [
    (
        ev.DETECTION_RECEIVED,
        {"detection_id": "det-1", "type": "malware", "severity": "critical", "file_path": "/home/a/x.exe"},
        "DetectionReceived",
        "ssss",
        ["det-1", "malware", "critical", "/home/a/x.exe"],
    ),
    (
        ev.RUN_STARTED,
        {"run_id": "run-1", "workflow_id": "wf", "detection_id": "det-1"},
        "RunStarted",
        "sss",
        ["run-1", "wf", "det-1"],
    ),
    (
        ev.STEP_FINISHED,
        {"run_id": "run-1", "step_id": "quarantine", "status": "completed", "seconds": 0.25, "error": None},
        "StepFinished",
        "sssd",
        ["run-1", "quarantine", "completed", 0.25],
    ),
    (
        ev.RUN_FINISHED,
        {"run_id": "run-1", "workflow_id": "wf", "status": "failed", "seconds": 1.5, "error": "boom"},
        "RunFinished",
        "sssd",
        ["run-1", "wf", "failed", 1.5],
    ),
    (
        ev.NOTIFICATION,
        {"title": "Threat contained", "body": "x.exe quarantined", "urgency": "critical"},
        "Notification",
        "sss",
        ["Threat contained", "x.exe quarantined", "critical"],
    ),
]


async def test_every_signal_reaches_a_dbus_next_client_and_dbus_monitor(
    bridge: tuple[EventHub, BusBridge], private_bus: Any, collector_factory: Any
) -> None:
    hub, _ = bridge
    collector: SignalCollector = await collector_factory(private_bus.address)
    monitor = await MonitorReader.start(private_bus.address, f"type='signal',interface='{INTERFACE}'")
    try:
        for event, data, *_ in EVENTS:
            hub.publish(event, data)
        for _, _, member, signature, args in EVENTS:
            (msg,) = await collector.wait_for(member)
            assert msg.signature == signature
            assert msg.body == args
            assert msg.path == OBJECT_PATH
            assert msg.interface == INTERFACE
        await monitor.wait_for("member=Notification")
        out = await monitor.stop()
    finally:
        await monitor.stop()
    for _, _, member, _, args in EVENTS:
        assert f"path={OBJECT_PATH}; interface={INTERFACE}; member={member}" in out
        for arg in args:
            if isinstance(arg, str):
                assert f'string "{arg}"' in out
            else:
                assert f"double {arg}" in out


async def test_signals_arrive_in_publish_order(
    bridge: tuple[EventHub, BusBridge], private_bus: Any, collector_factory: Any
) -> None:
    hub, _ = bridge
    collector = await collector_factory(private_bus.address)
    for i in range(50):
        hub.publish(ev.RUN_STARTED, {"run_id": f"r{i}", "workflow_id": "wf", "detection_id": None})
    msgs = await collector.wait_for("RunStarted", 50)
    assert [m.body[0] for m in msgs] == [f"r{i}" for i in range(50)]
    assert msgs[0].body[2] == ""  # no detection (a manual run): empty string, not a marshalling error


async def test_a_burst_of_signals_does_not_cut_the_bridge_off_the_bus(
    private_bus: Any, status: FakeStatus, collector_factory: Any
) -> None:
    """dbus-next 0.2.3 drops the connection when the socket buffer fills (EAGAIN); the bridge waits."""
    hub = EventHub()
    b = BusBridge(hub, status, private_bus.address, queue_size=10_000)
    await b.start()
    try:
        assert await b.wait_connected(WAIT)
        collector = await collector_factory(private_bus.address)
        for i in range(5000):
            hub.publish(ev.RUN_STARTED, {"run_id": f"r{i}", "workflow_id": "wf", "detection_id": "d" * 200})
        msgs = await collector.wait_for("RunStarted", 5000, timeout=60)
        assert msgs[-1].body[0] == "r4999"
        assert b.connected and b.connections == 1 and b.dropped_signals == 0
    finally:
        await b.stop()


async def test_a_mixed_burst_is_sent_in_few_batches_and_every_signal_arrives_in_order(
    private_bus: Any, status: FakeStatus, collector_factory: Any
) -> None:
    hub = EventHub()
    b = BusBridge(hub, status, private_bus.address, queue_size=10_000)
    await b.start()
    try:
        assert await b.wait_connected(WAIT)
        collector = await collector_factory(private_bus.address)
        expected = []
        for i in range(600):  # one loop iteration: the bridge wakes once for all of it
            event, data, member, signature, args = EVENTS[i % len(EVENTS)]
            data = {**data, "run_id": f"r{i}", "title": f"t{i}"}
            args = [f"r{i}" if a == "run-1" else f"t{i}" if a == "Threat contained" else a for a in args]
            hub.publish(event, data)
            hub.publish(ev.STEP_STARTED, {"run_id": f"r{i}", "step_id": "s", "attempt": 1})  # not a signal
            expected.append((member, signature, args))
        await collector.wait_until(lambda msgs: len([m for m in msgs if m.member != "PropertiesChanged"]) >= 600)
        got = [(m.member, m.signature, m.body) for m in collector.messages if m.member != "PropertiesChanged"]
        assert got == expected
        assert b.sent_signals == 600 and b.sent_batches <= 3 and b.dropped_signals == 0
        assert b.connected and b.connections == 1
    finally:
        await b.stop()


async def test_events_that_are_not_signals_emit_nothing(
    bridge: tuple[EventHub, BusBridge], private_bus: Any, collector_factory: Any
) -> None:
    hub, _ = bridge
    collector = await collector_factory(private_bus.address)
    hub.publish(ev.STEP_STARTED, {"run_id": "r", "step_id": "s", "attempt": 1})
    hub.publish(ev.DETECTION_REJECTED, {"name": "x", "reason": "too big"})
    hub.publish(ev.RUN_STARTED, {"run_id": "marker", "workflow_id": "wf", "detection_id": ""})
    await collector.wait_for("RunStarted")
    # Everything published before the marker has been processed in order: nothing else was a signal.
    assert {m.member for m in collector.messages} <= {"RunStarted", "PropertiesChanged"}


@pytest.mark.parametrize(
    "hostile",
    [
        "nul\x00inside",
        "bad-bytes-\udcff\udcfe.exe",  # a non-UTF-8 file name as os.fsdecode gives it
        "<b>markup</b> & 'quotes' \"",
        "x" * 100_000,
        "emoji 🦠 and \u202e right-to-left override",
        "",
    ],
)
async def test_hostile_detection_fields_are_cleaned_and_the_bridge_stays_on_the_bus(
    bridge: tuple[EventHub, BusBridge], private_bus: Any, collector_factory: Any, hostile: str
) -> None:
    hub, b = bridge
    collector = await collector_factory(private_bus.address)
    hub.publish(ev.DETECTION_RECEIVED, {"detection_id": 7, "type": hostile, "severity": None, "file_path": hostile})
    hub.publish(ev.RUN_STARTED, {"run_id": "after", "workflow_id": "wf", "detection_id": "7"})
    (det,) = await collector.wait_for("DetectionReceived")
    await collector.wait_for("RunStarted")
    detection_id, type_, severity, file_path = det.body
    assert detection_id == "7" and severity == "" and type_ == file_path
    assert "\x00" not in file_path and len(file_path) <= 4096
    file_path.encode("utf-8")  # valid UTF-8 on the wire (raises on a lone surrogate)
    if hostile and len(hostile) < 4096:
        assert file_path.replace("\\x00", "\x00").encode("utf-8", "surrogateescape") == hostile.encode(
            "utf-8", "surrogateescape"
        ) or "\\udc" in file_path
    assert b.connected and b.connections == 1  # the bus did not kick us out


async def test_properties_get_and_getall_read_the_daemon_status(
    bridge: tuple[EventHub, BusBridge], private_bus: Any, status: FakeStatus
) -> None:
    status.value.update(active_runs=3, queued_detections=7, state="running")
    bus = await connect(private_bus.address)
    try:
        reply = await properties_call(bus, "GetAll", "s", [INTERFACE])
        assert reply.message_type is MessageType.METHOD_RETURN
        values = {k: v.value for k, v in reply.body[0].items()}
        assert values == {"Version": "0.1.0", "State": "running", "ActiveRuns": 3, "QueuedDetections": 7}
        assert reply.body[0]["ActiveRuns"].signature == "u"
        status.value["state"] = "stopping"
        reply = await properties_call(bus, "Get", "ss", [INTERFACE, "State"])
        assert reply.body[0].value == "stopping"
    finally:
        close_bus(bus)


async def test_properties_are_read_only_and_a_refused_write_does_not_flood_the_log(
    bridge: tuple[EventHub, BusBridge], private_bus: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, b = bridge
    bus = await connect(private_bus.address)
    caplog.set_level(logging.INFO)
    try:
        for _ in range(3):
            reply = await properties_call(bus, "Set", "ssv", [INTERFACE, "ActiveRuns", Variant("u", 99)])
            assert reply.message_type is MessageType.ERROR
            assert reply.error_name == "org.freedesktop.DBus.Error.PropertyReadOnly"
        reply = await properties_call(bus, "Get", "ss", [INTERFACE, "NoSuchProperty"])
        assert reply.message_type is MessageType.ERROR
        reply = await properties_call(bus, "Get", "ss", [INTERFACE, "ActiveRuns"])
        assert reply.body[0].value == 0
    finally:
        close_bus(bus)
    assert b.connected
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "Traceback" not in caplog.text


async def test_introspection_shows_the_contract_interface(
    bridge: tuple[EventHub, BusBridge], private_bus: Any
) -> None:
    bus = await connect(private_bus.address)
    try:
        node = await bus.introspect(BUS_NAME, OBJECT_PATH)
        (iface,) = [i for i in node.interfaces if i.name == INTERFACE]
        signals = {s.name: "".join(a.signature for a in s.args) for s in iface.signals}
        assert signals == {
            "DetectionReceived": "ssss",
            "RunStarted": "sss",
            "StepFinished": "sssd",
            "RunFinished": "sssd",
            "Notification": "sss",
        }
        props = {p.name: (p.signature, p.access.value) for p in iface.properties}
        assert props == {
            "Version": ("s", "read"),
            "State": ("s", "read"),
            "ActiveRuns": ("u", "read"),
            "QueuedDetections": ("u", "read"),
        }
        assert iface.methods == []  # D-Bus is output only: all control is on the socket

        # The same through a dbus-next proxy, the way a desktop client would use it.
        proxy = bus.get_proxy_object(BUS_NAME, OBJECT_PATH, node).get_interface(INTERFACE)
        got: asyncio.Future[tuple[str, str, str, float]] = asyncio.get_running_loop().create_future()

        def on_run_finished(run_id: str, workflow_id: str, status: str, seconds: float) -> None:
            if not got.done():
                got.set_result((run_id, workflow_id, status, seconds))

        proxy.on_run_finished(on_run_finished)
        assert await proxy.get_state() == "running"
        hub, _ = bridge
        hub.publish(ev.RUN_FINISHED, {"run_id": "r9", "workflow_id": "wf", "status": "completed", "seconds": 2})
        assert await asyncio.wait_for(got, WAIT) == ("r9", "wf", "completed", 2.0)
    finally:
        close_bus(bus)


async def test_properties_changed_is_coalesced_in_a_burst(
    bridge: tuple[EventHub, BusBridge], private_bus: Any, status: FakeStatus, collector_factory: Any
) -> None:
    hub, _ = bridge
    collector = await collector_factory(
        private_bus.address, "type='signal',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged'"
    )
    # A burst of 300 count changes, published back to back as the daemon would under load.
    for i in range(1, 301):
        status.value.update(active_runs=i % 17, queued_detections=i)
        hub.publish(ev.STATUS_CHANGED, {"active_runs": i % 17, "queued_detections": i, "state": "running"})

    def final_seen(msgs: list[Message]) -> bool:
        return any(m.body[1].get("QueuedDetections", Variant("u", 0)).value == 300 for m in msgs)

    await collector.wait_until(final_seen)
    changed = collector.of("PropertiesChanged")
    assert 1 <= len(changed) <= 3, [m.body for m in changed]
    last = changed[-1]
    assert last.body[0] == INTERFACE
    assert last.body[1]["QueuedDetections"].value == 300
    assert last.body[1]["ActiveRuns"].value == 300 % 17
    assert "Version" not in last.body[1]  # only what changed


async def test_properties_changed_follows_later_changes(
    bridge: tuple[EventHub, BusBridge], private_bus: Any, status: FakeStatus, collector_factory: Any
) -> None:
    hub, _ = bridge
    collector = await collector_factory(
        private_bus.address, "type='signal',interface='org.freedesktop.DBus.Properties'"
    )
    for n in (1, 2, 0):
        status.value["active_runs"] = n
        hub.publish(ev.RUN_STARTED if n else ev.RUN_FINISHED, {"run_id": "r", "workflow_id": "w"})
        await collector.wait_until(
            lambda msgs, n=n: any(
                "ActiveRuns" in m.body[1] and m.body[1]["ActiveRuns"].value == n for m in msgs[-1:]
            )
        )
    status.value["state"] = "stopping"
    hub.publish(ev.STATUS_CHANGED, {"state": "stopping"})
    await collector.wait_until(lambda msgs: msgs[-1].body[1].get("State", Variant("s", "")).value == "stopping")


async def test_stop_sends_what_was_already_published_and_the_final_state(
    private_bus: Any, status: FakeStatus, collector_factory: Any
) -> None:
    hub = EventHub()
    b = BusBridge(hub, status, private_bus.address)
    await b.start()
    assert await b.wait_connected(WAIT)
    collector = await collector_factory(private_bus.address, "type='signal'")
    # The daemon's last words, published just before it stops the bridge in the same loop iteration.
    hub.publish(ev.RUN_FINISHED, {"run_id": "r1", "workflow_id": "wf", "status": "interrupted", "seconds": 9})
    status.value["state"] = "stopping"
    hub.publish(ev.STATUS_CHANGED, {"state": "stopping"})
    await b.stop()
    # The bridge is gone, yet both arrive: stop() returned only after the bus had them.
    (finished,) = await collector.wait_for("RunFinished")
    assert finished.body == ["r1", "wf", "interrupted", 9.0]
    await collector.wait_until(
        lambda msgs: any(m.member == "PropertiesChanged" and "State" in m.body[1]
                         and m.body[1]["State"].value == "stopping" for m in msgs)
    )


async def test_bus_none_does_not_connect_or_raise(status: FakeStatus) -> None:
    hub = EventHub()
    b = BusBridge(hub, status, "none")
    await b.start()
    assert b.state is BridgeState.DISABLED
    assert hub.subscriber_count == 0
    hub.publish(ev.RUN_STARTED, {"run_id": "r"})
    await b.stop()
    assert b.info()["state"] == "disabled"


@pytest.mark.parametrize("spec", ["nonsense", "unix:nokey", "tcp:host=127.0.0.1,port=notanumber"])
async def test_a_bad_bus_spec_is_logged_not_raised(
    status: FakeStatus, spec: str, caplog: pytest.LogCaptureFixture
) -> None:
    b = BusBridge(EventHub(), status, spec)
    await b.start()
    await b.stop()
    assert b.state in (BridgeState.DISABLED, BridgeState.STOPPED)
    assert b.last_error


async def test_a_bus_that_accepts_but_never_answers_does_not_hold_up_start_or_stop(status: FakeStatus) -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    b = BusBridge(EventHub(), status, f"tcp:host=127.0.0.1,port={port}")
    try:
        await b.start(first_attempt_timeout=0.2)  # returns although the first attempt is still pending
        assert b.state is BridgeState.CONNECTING and not b.connected
        await asyncio.wait_for(b.stop(), WAIT)
        assert b.state is BridgeState.STOPPED
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


async def test_unreachable_bus_does_not_raise_and_is_joined_when_it_appears(
    status: FakeStatus, collector_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    directory = make_socket_dir()
    address = f"unix:path={directory}/bus"
    hub = EventHub()
    b = BusBridge(hub, status, address, backoff_initial=0.05, backoff_max=0.2)
    bus = None
    try:
        await b.start()  # nothing listens there yet
        assert not b.connected
        assert b.state is BridgeState.CONNECTING
        assert "FileNotFoundError" in (b.last_error or "")
        assert any("cannot connect" in r.getMessage() for r in caplog.records)
        hub.publish(ev.RUN_STARTED, {"run_id": "lost", "workflow_id": "wf", "detection_id": ""})  # dropped

        bus = start_session_bus(directory)
        assert bus.address.startswith(address)
        assert await b.wait_connected(WAIT)
        collector = await collector_factory(bus.address)
        hub.publish(ev.RUN_STARTED, {"run_id": "seen", "workflow_id": "wf", "detection_id": ""})
        (msg,) = await collector.wait_for("RunStarted")
        assert msg.body[0] == "seen"
    finally:
        await b.stop()
        if bus is not None:
            bus.stop()


async def test_reconnects_and_reowns_the_name_after_a_bus_restart(
    bridge: tuple[EventHub, BusBridge], private_bus: Any, collector_factory: Any
) -> None:
    hub, b = bridge
    first = await collector_factory(private_bus.address)
    hub.publish(ev.RUN_STARTED, {"run_id": "before", "workflow_id": "wf", "detection_id": ""})
    await first.wait_for("RunStarted")

    private_bus.restart()  # kill the dbus-daemon, start a new one on the same socket path
    assert await b.wait_connected(WAIT, connections=2)

    second = await collector_factory(private_bus.address)
    reply = await second.bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="GetNameOwner",
            signature="s",
            body=[BUS_NAME],
        )
    )
    assert reply is not None and reply.body == [b.info()["unique_name"]]
    hub.publish(ev.RUN_STARTED, {"run_id": "after", "workflow_id": "wf", "detection_id": ""})
    (msg,) = await second.wait_for("RunStarted")
    assert msg.body[0] == "after"
    assert b.info()["reconnects"] == 1


async def test_stop_releases_the_name_and_unsubscribes(private_bus: Any, status: FakeStatus) -> None:
    hub = EventHub()
    b = BusBridge(hub, status, private_bus.address)
    await b.start()
    assert b.connected and hub.subscriber_count == 1
    watcher = await connect(private_bus.address)
    try:
        await b.stop()
        assert hub.subscriber_count == 0 and not b.connected
        assert b.state is BridgeState.STOPPED

        async def name_gone() -> None:
            while True:
                reply = await watcher.call(
                    Message(
                        destination="org.freedesktop.DBus",
                        path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus",
                        member="NameHasOwner",
                        signature="s",
                        body=[BUS_NAME],
                    )
                )
                assert reply is not None
                if reply.body == [False]:
                    return
                # The bus drops the name when it notices the closed socket: ask again after one round trip.

        await asyncio.wait_for(name_gone(), WAIT)
        await b.stop()  # idempotent

        # The bridge's fd left the event loop before it was closed: a new connection, which may get the
        # same fd number, works (a stale registration would leave its reader unarmed and hang it).
        fresh = await asyncio.wait_for(connect(private_bus.address), WAIT)
        try:
            reply = await asyncio.wait_for(fresh.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member="ListNames")), WAIT)
            assert reply is not None and BUS_NAME not in reply.body[0]
        finally:
            close_bus(fresh)
    finally:
        close_bus(watcher)


def test_signals_are_gathered_longer_only_while_a_burst_goes_on() -> None:
    from sdd.bus.model import BURST_EVENTS, BURST_WINDOW, SIGNAL_WINDOW, next_window

    assert next_window(1) == SIGNAL_WINDOW  # one-off signals wait at most the short window
    assert next_window(BURST_EVENTS - 1) == SIGNAL_WINDOW
    assert next_window(BURST_EVENTS) == BURST_WINDOW  # a big write: the next one gathers for longer
    assert SIGNAL_WINDOW < BURST_WINDOW <= 0.01
