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
        out = asyncio.run(_bench(bus.address))
    finally:
        bus.stop()
        shutil.rmtree(directory, ignore_errors=True)
    out["watcher_cost_per_detection"] = watcher_cost()
    return out


# -- what watchers cost the daemon per detection (issue 13) ----------------------------------------------------

DETECTIONS = 3000


def _detection_events(i: int) -> list[tuple[str, dict[str, Any]]]:
    """The events one detection of the five-step workflow publishes, with the daemon's field sets."""
    from sdd import hub as ev

    run = f"run-{i:08d}-0123456789abcdef"
    det = str(100_000 + i)
    out: list[tuple[str, dict[str, Any]]] = [
        (ev.DETECTION_RECEIVED, {"detection_id": det, "external_id": None, "type": "malware", "severity": "high",
                                 "file_path": f"/home/alice/Downloads/file-{i}.exe", "threat_name": "Win.Test"}),
        (ev.DETECTION_MATCHED, {"detection_id": det, "external_id": None, "runs": [run]}),
        (ev.RUN_STARTED, {"run_id": run, "workflow_id": "noop5", "detection_id": det, "external_id": None})]
    for s in range(5):
        out.append((ev.STEP_STARTED, {"run_id": run, "step_id": f"s{s}", "attempt": 1}))
        out.append((ev.STEP_FINISHED, {"run_id": run, "step_id": f"s{s}", "status": "completed",
                                       "seconds": 0.0001, "error": None}))
    out.append((ev.RUN_FINISHED, {"run_id": run, "workflow_id": "noop5", "status": "completed", "seconds": 0.001,
                                  "error": None, "detection_id": det, "external_id": None}))
    return out


async def _watcher_cost(address: str, tmp: str) -> dict[str, Any]:
    """CPU time of this process (the daemon's side: hub, API server, bridge) per detection's events, with
    nobody watching, a full socket subscriber (read by another process), the D-Bus bridge, and both."""
    import sys
    from pathlib import Path

    from sdd.api import ApiServer
    from sdd.bus import BusBridge
    from sdd.bus.process import BridgeProcess
    from tests.api.fakes import fake_daemon

    daemon = fake_daemon(Path(tmp))
    server = ApiServer(daemon)
    await server.start()
    status = {"version": "bench", "state": "running", "active_runs": 0, "queued_detections": 0}
    batches = [_detection_events(i) for i in range(DETECTIONS)]
    figures: dict[str, Any] = {}

    async def measure() -> float:
        hub = daemon.hub
        cpu0 = time.process_time()
        for events in batches:
            for name, data in events:
                if hub.wants(name):
                    hub.publish(name, data)
            await asyncio.sleep(0)  # the loop turns between detections, as in the daemon
        while any(s._queue for s in hub._subscribers):
            await asyncio.sleep(0.001)
        return (time.process_time() - cpu0) / DETECTIONS * 1e6

    bridge: Any = None
    watcher = None
    try:
        figures["nobody_cpu_us"] = round(await measure(), 1)
        watcher = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench._watcher", str(daemon.config.paths.socket), stdout=asyncio.subprocess.PIPE)
        assert watcher.stdout is not None and (await watcher.stdout.readline()).strip() == b"subscribed"
        figures["subscriber_cpu_us"] = round(await measure(), 1)
        # D-Bus as the daemon runs it: the bridge in its own process, fed the hub's frames.
        bridge = BridgeProcess(daemon.hub, lambda: dict(status), address, log_level="warning",
                               queue_size=100_000)
        await bridge.start()
        assert bridge.connected, bridge.info()
        figures["subscriber_and_dbus_cpu_us"] = round(await measure(), 1)
        watcher.terminate()
        await asyncio.wait_for(watcher.communicate(), 30)
        watcher = None
        while server.subscriber_count:
            await asyncio.sleep(0.01)
        figures["dbus_cpu_us"] = round(await measure(), 1)
        await bridge.stop()
        figures["signals_sent"] = bridge.report.get("sent_signals")
        # What the same signals cost the publishing process with the bridge in it (before it moved out).
        bridge = BusBridge(daemon.hub, lambda: dict(status), address, queue_size=100_000)
        await bridge.start()
        assert await bridge.wait_connected(10)
        figures["dbus_in_process_cpu_us"] = round(await measure(), 1)
        figures["signal_writes_in_process"] = bridge.sent_batches
    finally:
        if watcher is not None:
            watcher.kill()
            await watcher.wait()
        if bridge is not None:
            await bridge.stop()
        await server.close()
    figures["note"] = (f"{DETECTIONS} detections' events (14 each: the five-step workflow), CPU of the publishing "
                       "process per detection; the subscriber reads in another process, and D-Bus is the bridge "
                       "process the daemon runs (dbus_in_process_cpu_us: the bridge inside the publisher)")
    return figures


def watcher_cost() -> dict[str, Any]:
    import tempfile

    from tests.support.dbus import make_socket_dir, start_session_bus

    directory = make_socket_dir()
    bus = start_session_bus(directory)
    try:
        with tempfile.TemporaryDirectory(prefix="sdd-bench-bus-") as tmp:
            return asyncio.run(_watcher_cost(bus.address, tmp))
    finally:
        bus.stop()
        shutil.rmtree(directory, ignore_errors=True)
