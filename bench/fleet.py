"""sdd in a fleet: the cost and the behaviour of `[export.nats]` on a real `sdd` subprocess and a real
`nats-server -js` (127.0.0.1, temp store), five-step no-op workflow (one OCSF event per detection).

- burst: 5,000 files renamed into new/ at once → every run completed, detections/s, with `[export.nats]` off and
  on (same run of the bench, so the ratio is what counts), three interleaved rounds each, the best of each; with
  it on, also the time until the stream holds them; the CPU a detection of the daemon (and of nats-server).
- lag: detections paced at 1,000/s for 5 s (one-step workflow, so the daemon itself is not the bottleneck);
  outbox-to-stream: the daemon's own figure (commit into the outbox → JetStream ack, `status`); and end to end:
  from `metadata.logged_time` (the detection recorded, before its commit) to a JetStream consumer; p50/p99/max ms.
- outage: a 1,000/s stream (one-step workflow) for 75 s with NATS stopped from t=5 s to t=65 s: every event must be in the stream
  exactly once (count of distinct `metadata.uid` = detections), and the catch-up rate once NATS returns
  (events moved into the stream per second from its return until the outbox is empty).
Targets (issue 15): burst with export ≥ 0.9× without; lag p99 ≤ 50 ms at 1,000 events/s; no loss and catch-up
≥ 5,000 events/s after a 60 s outage.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.daemon import _cpu_seconds
from tests.support.daemon import DaemonProcess
from tests.support.nats import NatsServer, add_stream, js_call

WORKFLOW = "workflow_id: noop5\ntrigger: {type: malware}\nsteps:\n" + "".join(
    f"  - step_id: s{i}\n    action: send_notification\n    params: {{message: \"noop\", channel: log}}\n"
    for i in range(5))
ONE_STEP = WORKFLOW.split("  - step_id: s1")[0].replace("noop5", "noop1")
QUIET = {"logging": {"level": "warning"}}


def _daemon(root: Path, name: str, nats_url: str | None, workflow: str = WORKFLOW, **extra: Any) -> DaemonProcess:
    config: dict[str, Any] = {**QUIET, **extra}
    if nats_url:
        config["export"] = {"nats": {"url": nats_url}}
    return DaemonProcess(root / name, workflows={"wf": workflow}, config_overrides=config,
                         env={"SDD_HOSTNAME": "bench"})


def _prepare(d: DaemonProcess, n: int, prefix: str) -> list[str]:
    tmp = d.spool / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    (d.spool / "new").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"{prefix}{i}"
        (tmp / name).write_text(json.dumps({"type": "malware", "file_path": f"/tmp/{prefix}{i}", "threat_name": "T"}))
        names.append(name)
    return names


def _paced(d: DaemonProcess, names: list[str], rate: float) -> threading.Thread:
    tmp, new = d.spool / "tmp", d.spool / "new"

    def feed() -> None:
        start = time.monotonic()
        for i, name in enumerate(names):
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            os.rename(tmp / name, new / name)
    t = threading.Thread(target=feed, daemon=True)
    t.start()
    return t


def _stream_count(url: str, stream: str = "SDD") -> int:
    async def count(nc: Any, js: Any) -> int:
        return int((await js.stream_info(stream)).state.messages)
    return js_call(url, count)


def _outbox_depth(d: DaemonProcess) -> int:
    with d.client() as c:
        sinks = c.call("status")["export"]["sinks"]
    return int(sinks["nats"]["depth"]) if "nats" in sinks else 0


def _burst_round(d: DaemonProcess, prefix: str, exporting: bool, n: int) -> dict[str, Any]:
    """One burst of `n` files into a running daemon: until every run is completed (and, exporting, until the
    outbox is empty); rate and the daemon's CPU time a detection."""
    names = _prepare(d, n, prefix)
    done_before = d.count("SELECT count(*) FROM runs WHERE status = 'completed'")
    cpu_before = _cpu_seconds(d.pid)
    start = time.time()
    for name in names:
        os.rename(d.spool / "tmp" / name, d.spool / "new" / name)
    d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'completed'") >= done_before + n, 600,
               interval=0.02)
    elapsed = time.time() - start
    out: dict[str, Any] = {"detections_per_s": round(n / elapsed, 1), "seconds": round(elapsed, 2)}
    if exporting:
        d.wait_for(lambda: _outbox_depth(d) == 0, 600, interval=0.05)
        out["all_in_stream_s"] = round(time.time() - start, 2)
    out["daemon_cpu_us_per_detection"] = round((_cpu_seconds(d.pid) - cpu_before) / n * 1e6)
    return out


def _bursts(root: Path, nats: NatsServer, rounds: int = 3, n: int = 5000) -> dict[str, Any]:
    """`[export.nats]` off and on, `rounds` interleaved bursts each into two daemons kept running: a single
    2-second burst each way had moved the ratio between 0.82 and 0.98 from run to run on this shared VM."""
    off_rounds: list[dict[str, Any]] = []
    on_rounds: list[dict[str, Any]] = []
    with _daemon(root, "burst-off", None) as off, _daemon(root, "burst-nats", nats.url) as on:
        assert nats.proc is not None
        for r in range(rounds):
            off_rounds.append(_burst_round(off, f"a{r}_", False, n))
            nats_cpu = _cpu_seconds(nats.proc.pid)
            on_rounds.append(_burst_round(on, f"b{r}_", True, n))
            on_rounds[-1]["nats_server_cpu_us_per_detection"] = round((_cpu_seconds(nats.proc.pid) - nats_cpu)
                                                                      / n * 1e6)
    best_off = max(off_rounds, key=lambda x: x["detections_per_s"])
    best_on = max(on_rounds, key=lambda x: x["detections_per_s"])
    paired = [b["detections_per_s"] / a["detections_per_s"] for a, b in zip(off_rounds, on_rounds, strict=True)]
    return {"export_off": best_off, "export_nats": best_on,
            "ratio": round(best_on["detections_per_s"] / best_off["detections_per_s"], 3),
            "ratio_by_round": [round(x, 3) for x in paired],
            "ratio_median_of_rounds": round(statistics.median(paired), 3),
            "rounds": {"export_off": off_rounds, "export_nats": on_rounds},
            "note": f"{n:,} files a burst, best of {rounds} interleaved rounds each way (the ratio is best over "
                    "best; by round, each export-on burst over the export-off one just before it)"}


def _consume(url: str, arrivals: list[tuple[float, float, str]], ready: threading.Event,
             stop: threading.Event) -> threading.Thread:
    """A JetStream consumer (ordered, new messages only) recording (arrival, logged_time, uid) per event."""
    def main() -> None:
        import nats
        from nats.js.api import DeliverPolicy

        async def run() -> None:
            nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
            js = nc.jetstream()

            async def on_msg(msg: Any) -> None:
                event = json.loads(msg.data)
                arrivals.append((time.time(), event["metadata"]["logged_time"] / 1000.0, event["metadata"]["uid"]))
            await js.subscribe("sdd.events.>", stream="SDD", cb=on_msg, ordered_consumer=True,
                               deliver_policy=DeliverPolicy.NEW)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await nc.close()
        asyncio.run(run())
    t = threading.Thread(target=main, daemon=True)
    t.start()
    return t


def _lag(root: Path, nats: NatsServer, rate: float = 1000.0, seconds: float = 5.0) -> dict[str, Any]:
    n = int(rate * seconds)
    arrivals: list[tuple[float, float, str]] = []
    ready, stop = threading.Event(), threading.Event()
    consumer = _consume(nats.url, arrivals, ready, stop)
    ready.wait(30)
    d = _daemon(root, f"lag{int(rate)}", nats.url, ONE_STEP)
    try:
        with d:
            names = _prepare(d, n, "l")
            _paced(d, names, rate).join()
            deadline = time.time() + 120
            while len(arrivals) < n and time.time() < deadline:
                time.sleep(0.05)
            with d.client() as c:
                outbox_lag = c.call("status")["export"]["sinks"]["nats"]["lag_ms"]
    finally:
        stop.set()
        consumer.join(10)
    lags = sorted((a - logged) * 1000.0 for a, logged, _ in arrivals)
    return {"events": len(arrivals), "rate_per_s": rate, "outbox_to_stream_ms": outbox_lag,
            "recorded_to_consumer_ms": {"p50": round(statistics.median(lags), 2),
                                        "p99": round(lags[int(len(lags) * 0.99) - 1], 2), "max": round(lags[-1], 2)}}


def _outage(root: Path, nats: NatsServer, rate: float = 1000.0, total: float = 75.0, down_at: float = 5.0,
            down_for: float = 60.0) -> dict[str, Any]:
    n = int(rate * total)
    d = _daemon(root, "outage", nats.url, ONE_STEP)
    with d:
        names = _prepare(d, n, "o")
        feeder = _paced(d, names, rate)
        start = time.monotonic()
        time.sleep(down_at)
        nats.stop()
        time.sleep(max(0.0, start + down_at + down_for - time.monotonic()))
        backlog = _outbox_depth_safe(d)
        nats.start()
        back = time.monotonic()
        in_stream_at_return = _stream_count_retry(nats.url)
        while True:  # caught up: the backlog is gone (what is left is the stream's own 1,000/s)
            if _outbox_depth(d) <= 20:
                caught_up, in_stream = time.monotonic() - back, _stream_count(nats.url)
                break
            time.sleep(0.02)
        feeder.join()
        d.wait_for(lambda: d.count("SELECT count(*) FROM detections") == n, 900, interval=0.1)
        d.wait_for(lambda: _outbox_depth(d) == 0, 600, interval=0.02)
        detections = d.count("SELECT count(*) FROM detections")
        sustained = d.count("SELECT count(*) FROM detections WHERE received_at <= "
                            "(SELECT min(received_at) FROM detections) + ?", (total,))
    uids = _distinct_uids(nats.url)
    moved = in_stream - in_stream_at_return
    return {"detections": detections, "stream_distinct_uids": uids, "lost": detections - uids,
            "backlog_when_nats_returned": backlog, "catch_up_s": round(caught_up, 2),
            "catch_up_events_per_s": round(moved / caught_up, 1) if caught_up > 0 else None,
            "down_s": down_for, "rate_per_s": rate, "recorded_within_the_75s": sustained}


def _outbox_depth_safe(d: DaemonProcess) -> int | None:
    try:
        return _outbox_depth(d)
    except Exception:  # noqa: BLE001 -- a figure, not a failure
        return None


def _stream_count_retry(url: str) -> int:
    deadline = time.monotonic() + 30
    while True:
        try:
            return _stream_count(url)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _distinct_uids(url: str) -> int:
    async def read(nc: Any, js: Any) -> int:
        from nats.js.api import DeliverPolicy

        info = await js.stream_info("SDD")
        total = info.state.messages
        seen: set[str] = set()
        sub = await js.subscribe("sdd.events.>", stream="SDD", ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.ALL)
        for _ in range(total):
            msg = await sub.next_msg(timeout=30)
            seen.add(json.loads(msg.data)["metadata"]["uid"])
        await sub.unsubscribe()
        return len(seen)
    return js_call(url, read, timeout=600)


def run() -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="sdd-bench-fleet-"))
    out: dict[str, Any] = {}
    with NatsServer(root / "burst") as nats:
        add_stream(nats.url, "SDD", ["sdd.events.>"])
        out["burst"] = _bursts(root, nats)
    with NatsServer(root / "lag") as nats:
        add_stream(nats.url, "SDD", ["sdd.events.>"])
        out["lag_1000_per_s"] = _lag(root, nats)
    with NatsServer(root / "lag250") as nats:  # a rate a loaded 2-core machine sustains: the drain's own lag
        add_stream(nats.url, "SDD", ["sdd.events.>"])
        out["lag_250_per_s"] = _lag(root, nats, rate=250.0, seconds=8.0)
    with NatsServer(root / "outage") as nats:
        add_stream(nats.url, "SDD", ["sdd.events.>"])
        out["nats_down_60s"] = _outage(root, nats)
    out["targets"] = {"burst_ratio_min": 0.9, "lag_p99_ms_max": 50, "catch_up_events_per_s_min": 5000}
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
