"""D-Bus bridge benchmark: hub event → signal on a private dbus-daemon → a dbus-next client.

Figures: one-at-a-time latency (p50/p99), burst throughput (signals/s for 5,000 events published back to
back), and how many PropertiesChanged a burst of 5,000 status changes produces (coalescing). Bounded: a few
seconds. Needs `dbus-daemon`; without it the figures say so.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from typing import Any

BURST = 5000
SINGLES = 300


async def _bench(address: str) -> dict[str, Any]:
    from dbus_next import Message, MessageType
    from dbus_next.aio import MessageBus

    from sdd import hub as ev
    from sdd.bus import INTERFACE, BusBridge
    from sdd.hub import EventHub

    status = {"version": "bench", "state": "running", "active_runs": 0, "queued_detections": 0}
    hub = EventHub()
    bridge = BusBridge(hub, lambda: dict(status), address, queue_size=BURST * 2)
    await bridge.start()
    if not await bridge.wait_connected(10):
        return {"error": f"bridge did not connect: {bridge.info()}"}

    client = await MessageBus(bus_address=address).connect()
    client._disconnect_future.add_done_callback(lambda f: f.cancelled() or f.exception())
    received: list[float] = []
    changed: list[Any] = []
    wake = asyncio.Event()

    def on_message(msg: Message) -> None:
        if msg.message_type is not MessageType.SIGNAL:
            return
        if msg.member == "RunStarted":
            received.append(time.perf_counter())
            wake.set()
        elif msg.member == "PropertiesChanged":
            changed.append(msg.body[1])
            wake.set()

    client.add_message_handler(on_message)
    for rule in (f"type='signal',interface='{INTERFACE}'",
                 "type='signal',interface='org.freedesktop.DBus.Properties'"):
        await client.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                  interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                                  body=[rule]))

    async def until(pred: Any) -> None:
        while not pred():
            wake.clear()
            await wake.wait()

    latencies = []
    for i in range(SINGLES):
        n = len(received)
        t0 = time.perf_counter()
        hub.publish(ev.RUN_STARTED, {"run_id": f"s{i}", "workflow_id": "wf", "detection_id": ""})
        await asyncio.wait_for(until(lambda n=n: len(received) > n), 10)
        latencies.append((received[-1] - t0) * 1000)
    latencies.sort()

    received.clear()
    t0 = time.perf_counter()
    for i in range(BURST):
        hub.publish(ev.RUN_STARTED, {"run_id": f"b{i}", "workflow_id": "wf", "detection_id": ""})
    await asyncio.wait_for(until(lambda: len(received) >= BURST), 60)
    burst_s = received[-1] - t0

    changed.clear()
    for i in range(1, BURST + 1):
        status["queued_detections"] = i
        hub.publish(ev.STATUS_CHANGED, {"queued_detections": i})
    await asyncio.wait_for(
        until(lambda: any(c.get("QueuedDetections") and c["QueuedDetections"].value == BURST for c in changed)), 10
    )

    client.disconnect()
    await bridge.stop()
    return {
        "signal_latency_ms_p50": round(statistics.median(latencies), 3),
        "signal_latency_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1], 3),
        "burst_signals": BURST,
        "burst_signals_per_s": round(BURST / burst_s),
        "status_changes_in_burst": BURST,
        "properties_changed_emitted": len(changed),
    }


def run() -> dict[str, Any]:
    if shutil.which("dbus-daemon") is None:
        return {"skipped": "dbus-daemon is not installed"}
    from tests.support.dbus import make_socket_dir, start_session_bus

    directory = make_socket_dir()
    bus = start_session_bus(directory)
    try:
        return asyncio.run(_bench(bus.address))
    finally:
        bus.stop()
        shutil.rmtree(directory, ignore_errors=True)
