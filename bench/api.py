"""Socket API benchmark, against a real `sdd` daemon process (not an in-process server):

- `status` round trip, p50/p99 (target: p50 <= 0.3 ms), one client on one connection;
- `runs.list` (limit 50, filtered by workflow and status) with 1,000,000 runs in the history
  (target: <= 10 ms), first pages and pages deep in the history through a cursor;
- 200 concurrent clients (asyncio, one connection each) calling `status` and `runs.list`: errors must be 0.

The 1,000,000-run database is the store benchmark's cached synthetic history (bench/store.py, built with
the store's own schema and executemany); it is copied so the daemon can open it read-write. Retention is
set high so the daemon's start-up purge keeps the (old, synthetic) history.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sdd_client.client import AsyncClient, Client

STATUS_CALLS = 3000
LIST_CALLS = 300
CLIENTS = 200
CALLS_PER_CLIENT = 10


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": round(_pct(samples, 0.50) * 1000, 3), "p99_ms": round(_pct(samples, 0.99) * 1000, 3),
            "mean_ms": round(statistics.fmean(samples) * 1000, 3), "n": len(samples)}


def _timed(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


async def _crowd(socket_path: Path) -> dict[str, Any]:
    errors: list[str] = []
    latencies: list[float] = []
    gate = asyncio.Event()

    async def one(i: int) -> None:
        try:
            async with AsyncClient(socket_path, timeout=60) as client:
                await client.call("ping")  # connected before the gate opens: all 200 are open at once
                await gate.wait()
                for j in range(CALLS_PER_CLIENT):
                    t0 = time.perf_counter()
                    if j % 2:
                        await client.call("runs.list", limit=50, workflow=f"workflow_{i % 20:02d}")
                    else:
                        await client.call("status")
                    latencies.append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
            errors.append(f"{type(exc).__name__}: {exc}")

    tasks = [asyncio.create_task(one(i)) for i in range(CLIENTS)]
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    return {"clients": CLIENTS, "calls": len(latencies), "errors": len(errors), "first_errors": errors[:3],
            "seconds": round(elapsed, 3), "calls_per_s": round(len(latencies) / elapsed, 1) if elapsed else None,
            **_ms(latencies)}


def run() -> dict[str, Any]:
    from bench.store import history_db
    from tests.support.daemon import DaemonProcess

    t0 = time.perf_counter()
    source = history_db()
    build_s = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(prefix="sdd-bench-api-"))
    out: dict[str, Any] = {"server": "real sdd daemon process (user mode), client in the benchmark process",
                           "history_runs": 1_000_000, "history_db_ready_s": round(build_s, 1)}
    try:
        d = DaemonProcess(tmp, config_overrides={"engine": {"history_retention_days": 1_000_000},
                                                 "logging": {"level": "warning"}})
        shutil.copyfile(source, d.database)
        with d:
            with Client(d.socket, timeout=60) as client:
                for _ in range(200):  # warm up connection, caches and the page cache of the database
                    client.call("status")
                    client.call("runs.list", limit=50, workflow="workflow_03", status="completed")
                out["status"] = _ms(_timed(lambda: client.call("status"), STATUS_CALLS))
                out["ping"] = _ms(_timed(lambda: client.call("ping"), STATUS_CALLS))
                out["runs_list_filtered_first_page"] = _ms(_timed(
                    lambda: client.call("runs.list", limit=50, workflow="workflow_03", status="completed"),
                    LIST_CALLS))
                # Deep pages: walk 200 pages into the filtered history, then time pages from there on.
                cursor = None
                for _ in range(200):
                    cursor = client.call("runs.list", limit=50, workflow="workflow_07", status="completed",
                                         **({"cursor": cursor} if cursor else {}))["cursor"]
                deep = []
                for _ in range(LIST_CALLS):
                    t1 = time.perf_counter()
                    page = client.call("runs.list", limit=50, workflow="workflow_07", status="completed",
                                       cursor=cursor)
                    deep.append(time.perf_counter() - t1)
                    cursor = page["cursor"] or cursor
                out["runs_list_filtered_deep_page"] = _ms(deep)
                out["runs_list_time_window"] = _ms(_timed(
                    lambda: client.call("runs.list", limit=50, status="failed", since=1_763_000_000.0,
                                        until=1_765_000_000.0), LIST_CALLS))
            out["concurrent_200"] = asyncio.run(_crowd(d.socket))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["targets"] = {
        "status_p50_le_0.3ms": out.get("status", {}).get("p50_ms", 1e9) <= 0.3,
        "filtered_page_le_10ms": out.get("runs_list_filtered_first_page", {}).get("p50_ms", 1e9) <= 10,
        "200_clients_no_error": out.get("concurrent_200", {}).get("errors", 1) == 0,
    }
    return out
