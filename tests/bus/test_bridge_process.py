"""The D-Bus bridge in its own process (`sdd.bus.process` + `sdd.bus.child`), against a real private
dbus-daemon, fed by a real EventHub: signals and properties as the in-process bridge sends them, a child that
dies is started again, SIGTERM does not stop it early, stop() delivers the last words, the end of the
daemon's socket ends it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from dbus_next import Message, Variant
from sdd_client import protocol

from sdd import hub as ev
from sdd.bus import BUS_NAME, INTERFACE, OBJECT_PATH, BridgeState
from sdd.bus.process import BridgeProcess, child_command
from sdd.hub import EventHub
from tests.bus.conftest import WAIT, SignalCollector, call_bus, close_bus, connect

pytestmark = pytest.mark.timeout(60)


class Props:
    """The daemon's `_bus_properties()`: a dict the test changes."""

    def __init__(self) -> None:
        self.value: dict[str, Any] = {"version": "9.9.9", "state": "running", "active_runs": 0,
                                      "queued_detections": 0}

    def __call__(self) -> dict[str, Any]:
        return dict(self.value)


@pytest.fixture
async def proc_bridge(private_bus: Any) -> AsyncIterator[tuple[EventHub, BridgeProcess, Props]]:
    hub, props = EventHub(), Props()
    b = BridgeProcess(hub, props, private_bus.address, log_level="warning", restart_initial=0.05)
    await b.start()
    try:
        assert b.connected and b.owns_name and b.pid is not None
        yield hub, b, props
    finally:
        await b.stop()


async def name_owner(address: str) -> str | None:
    bus = await connect(address)
    try:
        reply = await call_bus(bus, "NameHasOwner", "s", [BUS_NAME])
        if not reply.body[0]:
            return None
        return str((await call_bus(bus, "GetNameOwner", "s", [BUS_NAME])).body[0])
    finally:
        close_bus(bus)


async def get_property(address: str, name: str) -> Any:
    bus = await connect(address)
    try:
        reply = await bus.call(Message(destination=BUS_NAME, path=OBJECT_PATH,
                                       interface="org.freedesktop.DBus.Properties", member="Get",
                                       signature="ss", body=[INTERFACE, name]))
        assert reply is not None and reply.body, reply
        return reply.body[0].value
    finally:
        close_bus(bus)


def bridge_child(daemon_pid: int) -> int:
    """The daemon's only child, which must be its D-Bus bridge process."""
    with open(f"/proc/{daemon_pid}/task/{daemon_pid}/children") as f:
        (child,) = (int(p) for p in f.read().split())
    with open(f"/proc/{child}/cmdline", "rb") as f:
        assert b"sdd.bus.child" in f.read()
    return child


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_signals_and_properties_come_from_the_bridge_process(
        proc_bridge: tuple[EventHub, BridgeProcess, Props], private_bus: Any, collector_factory: Any) -> None:
    hub, b, props = proc_bridge
    assert b.pid != os.getpid() and not pid_gone(b.pid)
    collector: SignalCollector = await collector_factory(private_bus.address, "type='signal'")
    hub.publish(ev.RUN_STARTED, {"run_id": "r1", "workflow_id": "wf", "detection_id": "7"})
    hub.publish(ev.STEP_STARTED, {"run_id": "r1", "step_id": "s1", "attempt": 1})  # not a signal
    hub.publish(ev.STEP_FINISHED, {"run_id": "r1", "step_id": "s1", "status": "completed", "seconds": 0.5})
    # A file name that is not UTF-8 (surrogateescape'd in the daemon) is shown escaped, as in-process.
    hub.publish(ev.DETECTION_RECEIVED, {"detection_id": "7", "type": "malware", "severity": "high",
                                        "file_path": "/tmp/\udcff\x00x"})
    (started,) = await collector.wait_for("RunStarted")
    assert started.body == ["r1", "wf", "7"]
    (step,) = await collector.wait_for("StepFinished")
    assert step.body == ["r1", "s1", "completed", 0.5]
    (received,) = await collector.wait_for("DetectionReceived")
    assert received.body == ["7", "malware", "high", "/tmp/\\udcff\\x00x"]
    assert [m.member for m in collector.messages if m.interface == INTERFACE] == [
        "RunStarted", "StepFinished", "DetectionReceived"]
    assert await name_owner(private_bus.address) == b.report["unique_name"]
    assert await get_property(private_bus.address, "Version") == "9.9.9"
    # A property change reaches the bus as PropertiesChanged, and Get reads the new value.
    props.value["active_runs"] = 3
    hub.publish(ev.STATUS_CHANGED, {"active_runs": 3})
    await collector.wait_until(lambda msgs: any(
        m.member == "PropertiesChanged" and m.body[1].get("ActiveRuns", Variant("u", 0)).value == 3 for m in msgs))
    assert await get_property(private_bus.address, "ActiveRuns") == 3
    assert b.info()["state"] == "connected" and b.info()["sent_signals"] is not None


async def test_a_killed_bridge_process_is_started_again_and_signals_flow(
        proc_bridge: tuple[EventHub, BridgeProcess, Props], private_bus: Any, collector_factory: Any) -> None:
    hub, b, _ = proc_bridge
    first = b.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)

    async def replaced() -> None:
        while not (b.connected and b.pid != first):
            await asyncio.sleep(0.01)

    # Meanwhile the daemon's view says why nothing is sent (what a desktop notification reports).
    async def noticed() -> None:
        while b.connected and b.pid == first:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(noticed(), WAIT)
    assert b.state is BridgeState.CONNECTING and "killed by SIGKILL" in (b.last_error or ""), b.last_error
    await asyncio.wait_for(replaced(), WAIT)
    assert pid_gone(first) and b.restarts == 1
    collector: SignalCollector = await collector_factory(private_bus.address)
    hub.publish(ev.RUN_FINISHED, {"run_id": "r2", "workflow_id": "wf", "status": "completed", "seconds": 1})
    (finished,) = await collector.wait_for("RunFinished")
    assert finished.body == ["r2", "wf", "completed", 1.0]


async def test_sigterm_does_not_stop_the_bridge_process_before_the_daemon_says_its_last_words(
        private_bus: Any, collector_factory: Any) -> None:
    hub, props = EventHub(), Props()
    b = BridgeProcess(hub, props, private_bus.address, log_level="warning")
    await b.start()
    assert b.connected and b.pid is not None
    pid = b.pid
    collector: SignalCollector = await collector_factory(private_bus.address, "type='signal'")
    os.kill(pid, signal.SIGTERM)  # what a unit's stop or a Ctrl-C sends to the whole group
    os.kill(pid, signal.SIGINT)
    # The daemon's last words, published just before it stops the bridge in the same loop iteration.
    hub.publish(ev.RUN_FINISHED, {"run_id": "r1", "workflow_id": "wf", "status": "interrupted", "seconds": 9})
    props.value["state"] = "stopping"
    hub.publish(ev.STATUS_CHANGED, {"state": "stopping"})
    await b.stop()
    # stop() returned after the child had flushed them to the bus and exited.
    assert pid_gone(pid) and b.state is BridgeState.STOPPED and not b.connected
    (finished,) = await collector.wait_for("RunFinished")
    assert finished.body == ["r1", "wf", "interrupted", 9.0]
    await collector.wait_until(lambda msgs: any(
        m.member == "PropertiesChanged" and m.body[1].get("State", Variant("s", "")).value == "stopping"
        for m in msgs))
    assert await name_owner(private_bus.address) is None
    assert hub.subscriber_count == 0
    await b.stop()  # idempotent


async def test_the_bridge_process_ends_when_the_daemons_socket_does(private_bus: Any) -> None:
    ours, theirs = socket.socketpair()
    proc = await asyncio.create_subprocess_exec(
        *child_command(), "--fd", str(theirs.fileno()), "--bus", private_bus.address, "--log-level", "warning",
        pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL)
    theirs.close()
    try:
        ours.settimeout(WAIT)

        def first_report() -> dict[str, Any]:
            protocol.send_message(ours, {"props": Props()()})
            while not (message := protocol.recv_message(ours, max_depth=8))["report"]["first_attempt"]:
                pass  # (reports during the connection: the name acquired before the state says connected)
            return dict(message["report"])

        report = await asyncio.to_thread(first_report)
        assert report["state"] == "connected", report
        assert await name_owner(private_bus.address) is not None
        ours.close()  # the daemon is gone (kill -9 closes its end just the same)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
        assert await name_owner(private_bus.address) is None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        ours.close()


async def test_a_bus_that_is_not_there_is_reported_and_bus_none_starts_no_process(tmp_path: Any) -> None:
    hub = EventHub()
    off = BridgeProcess(hub, Props(), "none")
    await off.start()
    assert off.state is BridgeState.DISABLED and off.pid is None and hub.subscriber_count == 0
    missing = BridgeProcess(hub, Props(), f"unix:path={tmp_path}/no-bus", log_level="error")
    await missing.start()
    try:
        assert missing.pid is not None and not missing.connected
        assert missing.state is BridgeState.CONNECTING
        assert missing.last_error is not None and "No such file" in missing.last_error, missing.last_error
    finally:
        await missing.stop()
    assert pid_gone(missing.pid) and missing.state is BridgeState.STOPPED


async def test_a_daemon_killed_with_sigkill_takes_its_bridge_process_and_the_name_with_it(
        tmp_path: Any, private_bus: Any) -> None:
    from tests.support.daemon import DaemonProcess

    d = DaemonProcess(tmp_path, config_overrides={"dbus": {"bus": private_bus.address}})
    try:
        await asyncio.to_thread(d.start)
        await asyncio.to_thread(d.wait_for, lambda: d.client().call("status")["bus"]["state"] == "connected",
                                20, 0.05, "the bridge connected")
        child = bridge_child(d.pid)
        assert await name_owner(private_bus.address) is not None
        d.kill()  # SIGKILL: no stop(), no last words; the socket's end of file is all the child gets

        async def gone() -> None:
            while not pid_gone(child) or await name_owner(private_bus.address) is not None:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(gone(), WAIT)
    finally:
        await asyncio.to_thread(d.close)


async def test_a_burst_bigger_than_the_bridges_own_queue_arrives_whole(
        private_bus: Any, collector_factory: Any) -> None:
    # The feed hands over up to 1,024 events a write and the child may read several writes at once: it must
    # pause its reads rather than drop what its bridge has not taken yet.
    hub = EventHub()
    b = BridgeProcess(hub, Props(), private_bus.address, log_level="warning", queue_size=100_000)
    await b.start()
    try:
        assert b.connected
        collector: SignalCollector = await collector_factory(private_bus.address)
        n = 12_000
        for i in range(n):
            hub.publish(ev.STEP_FINISHED, {"run_id": "r", "step_id": f"s{i}", "status": "completed", "seconds": 0})
        got = await collector.wait_for("StepFinished", n, timeout=50)
        assert [m.body[1] for m in got] == [f"s{i}" for i in range(n)]
    finally:
        await b.stop()
    assert b.report.get("sent_signals") == n


async def test_a_stopped_bridge_process_starts_again(private_bus: Any, collector_factory: Any) -> None:
    hub = EventHub()
    b = BridgeProcess(hub, Props(), private_bus.address, log_level="warning")
    await b.start()
    first = b.pid
    await b.stop()
    assert first is not None and pid_gone(first)
    await b.start()
    try:
        assert b.connected and b.pid != first
        collector: SignalCollector = await collector_factory(private_bus.address)
        hub.publish(ev.RUN_STARTED, {"run_id": "r3", "workflow_id": "wf", "detection_id": "1"})
        (started,) = await collector.wait_for("RunStarted")
        assert started.body == ["r3", "wf", "1"]
    finally:
        await b.stop()
