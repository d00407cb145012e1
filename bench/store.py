"""Store benchmarks: group-committed write throughput, and reads over a 1,000,000-run history.

- writes: detections, each with a run of 5 steps (intent + outcome per step) and a final status, written by
  many concurrent coroutines as the daemon would; per second, plus how many transactions that took.
- reads: a synthetic history of 1,000,000 runs (20 workflows, realistic status mix, ties in start times),
  built once with executemany in one transaction and cached under /tmp keyed by schema version; p50/p99 of
  a filtered `list_runs(limit=50)` page (first pages and deep pages through a cursor) and of `run_stats()`.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdd.store import SCHEMA_VERSION, Store
from sdd.store.codec import encode_cursor
from sdd.store.schema import rebuild_stats

RUNS = 1_000_000
WORKFLOWS = [f"workflow_{i:02d}" for i in range(20)]
_GENERATOR = 2  # bump when the synthetic data or the (unreleased) schema changes
CACHE = Path(f"/tmp/sdd-bench-1m-v{SCHEMA_VERSION}-g{_GENERATOR}.db")
_STATUSES = ["completed"] * 85 + ["failed"] * 8 + ["rolled_back"] * 4 + ["cancelled"] * 2 + ["interrupted"]
_SPAN = 90 * 86400.0
_T0 = 1_760_000_000.0


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _ms(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(samples) * 1000, 3), "p99_ms": round(_pct(samples, 0.99) * 1000, 3)}


# --- writes ----------------------------------------------------------------------------------------------------
async def _pipeline(store: Store, worker: int, count: int) -> None:
    for i in range(count):
        did = await store.add_detection({"type": "malware", "severity": "high", "file_path": f"/tmp/{worker}/{i}",
                                         "threat_name": "Eicar-Test"}, spool_name=f"{worker}.{i}")
        run_id = f"run-{worker}-{i}"
        store.submit(store.create_run_op(run_id, "bench", did, {"n": i}, {"workflow_id": "bench"}))
        for s in range(5):
            step = f"step{s}"
            # Non-idempotent intents are awaited like the recorder does; the rest are fire-and-forget.
            if s == 4:
                await store.record_step_started(run_id, step, action="run_script", idempotent=False,
                                                params={"p": 1})
            else:
                store.submit(_step_started(store, run_id, step))
            store.submit(_step_finished(store, run_id, step))
        await store.finish_run(run_id, "completed")


def _step_started(store: Store, run_id: str, step: str) -> Callable[..., Any]:
    from sdd.store.writes import record_step_started_op
    return record_step_started_op(run_id, step, "run", None, "action", "noop", 1, True, None, {"p": 1})


def _step_finished(store: Store, run_id: str, step: str) -> Callable[..., Any]:
    from sdd.store.writes import record_step_finished_op
    return record_step_finished_op(run_id, step, "completed", "run", 1, None, None, {"ok": True}, None)


async def _writes(directory: Path, workers: int, per_worker: int) -> dict[str, Any]:
    store = Store.open(directory / "writes.db")
    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(_pipeline(store, w, per_worker) for w in range(workers)))
        await store.flush()
        elapsed = time.perf_counter() - t0
        stats = store.writer_stats()
    finally:
        store.close()
    n = workers * per_worker
    return {"detections": n, "concurrency": workers, "seconds": round(elapsed, 3),
            "detections_with_run_and_5_steps_per_s": round(n / elapsed), "rows_per_s": round(n * 13 / elapsed),
            "transactions": stats.transactions, "operations": stats.operations,
            "ops_per_transaction": round(stats.operations / max(stats.transactions, 1), 1)}


# --- the recorder on the real engine ---------------------------------------------------------------------------
async def _engine(directory: Path, sequential: int, burst: int) -> dict[str, Any]:
    from sdd.engine import Workflow, WorkflowEngine
    from sdd.history.recorder import HistoryRecorder

    store = Store.open(directory / "engine.db")
    try:
        engine = WorkflowEngine(listeners=[HistoryRecorder(store)])

        async def noop(*, context: dict[str, Any], **params: Any) -> None:
            return None

        engine.register_action("noop", noop, idempotent=True)
        engine.register_action("noop_unsafe", noop, idempotent=False)
        steps = [{"step_id": f"s{i}", "type": "action", "action": "noop", "params": {"i": i}} for i in range(5)]
        idem = Workflow.from_dict({"workflow_id": "five_noops", "name": "five", "steps": steps})
        unsafe = Workflow.from_dict({"workflow_id": "five_with_unsafe", "name": "five", "steps": steps[:4] + [
            {"step_id": "s4", "type": "action", "action": "noop_unsafe"}]})
        out: dict[str, Any] = {}
        for wf in (idem, unsafe):
            lat = []
            for _ in range(sequential):
                t = time.perf_counter()
                await engine.execute_workflow(wf, detection={"type": "malware"})
                lat.append(time.perf_counter() - t)
            t = time.perf_counter()
            await asyncio.gather(*(engine.execute_workflow(wf, detection={"type": "malware"})
                                   for _ in range(burst)))
            out[wf.workflow_id] = {"sequential_run_recorded": _ms(lat),
                                   "burst_runs_per_s": round(burst / (time.perf_counter() - t))}
        out["transactions"] = store.writer_stats().transactions
        out["operations"] = store.writer_stats().operations
        return out
    finally:
        store.close()


# --- the 1M-run history ------------------------------------------------------------------------------------------
def _build_history(path: Path) -> float:
    t0 = time.perf_counter()
    tmp = path.with_name(path.name + f".building-{os.getpid()}")
    store = Store.open(tmp)
    store.close()
    import sqlite3
    conn = sqlite3.connect(tmp, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    rng = random.Random(42)
    conn.execute("BEGIN")

    def rows() -> Any:
        for i in range(RUNS):
            # Start times ascend with deliberate ties (every 4 runs share one), ids are not in time order.
            started = _T0 + (i // 4) * (_SPAN / (RUNS / 4))
            status = "running" if i >= RUNS - 5 else _STATUSES[rng.randrange(100)]
            finished = None if status == "running" else started + rng.expovariate(1 / 2.0)
            yield (f"{(i * 2654435761) % 2**32:08x}{i:07d}", WORKFLOWS[rng.randrange(len(WORKFLOWS))], status,
                   "detection", '{"notify":"root@localhost","file_path":"/home/alice/Downloads/invoice.exe"}',
                   started, finished)

    conn.executemany("INSERT INTO runs (run_id, workflow_id, status, trigger, context, started_at, finished_at) "
                     "VALUES (?,?,?,?,?,?,?)", rows())
    rebuild_stats(conn)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    conn.close()
    os.replace(tmp, path)
    for suffix in ("-wal", "-shm"):
        try:
            os.unlink(str(tmp) + suffix)
        except FileNotFoundError:
            pass
    return time.perf_counter() - t0


def history_db() -> Path:
    """The cached synthetic 1,000,000-run database (built on first use, ~30 s). Copy it before opening it
    read-write: other benchmarks (the API's runs.list over 1M runs) share it."""
    if not CACHE.exists():
        _build_history(CACHE)
    return CACHE


def _time(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _reads(directory: Path, iterations: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"runs": RUNS}
    if not CACHE.exists():
        figures["build_seconds"] = round(_build_history(CACHE), 1)
    db = directory / "history.db"
    shutil.copyfile(CACHE, db)  # a private copy: the cached file is never opened read-write by a bench
    os.chmod(db, 0o600)
    store = Store.open(db)
    rng = random.Random(7)
    try:
        def deep_cursor() -> str:
            t = _T0 + rng.random() * _SPAN
            return encode_cursor(t, "ffffffffffffffff")

        cases: dict[str, Callable[[], Any]] = {
            "list_runs_unfiltered_first_page": lambda: store.list_runs(limit=50),
            "list_runs_workflow_first_page": lambda: store.list_runs(limit=50, workflow_id=rng.choice(WORKFLOWS)),
            "list_runs_workflow_status_first_page": lambda: store.list_runs(
                limit=50, workflow_id=rng.choice(WORKFLOWS), status="failed"),
            "list_runs_workflow_status_deep_page": lambda: store.list_runs(
                limit=50, workflow_id=rng.choice(WORKFLOWS), status="failed", cursor=deep_cursor()),
            "list_runs_status_time_window": lambda: store.list_runs(
                limit=50, status="rolled_back", since=_T0 + 10 * 86400, until=_T0 + 40 * 86400),
            "list_runs_rare_status_deep_page": lambda: store.list_runs(
                limit=50, status="interrupted", cursor=deep_cursor()),
            "run_stats": lambda: store.run_stats(),
            "counts": lambda: store.counts(),
        }
        t = time.perf_counter()
        page = store.list_runs(limit=50, workflow_id=WORKFLOWS[0], status="completed")
        figures["list_runs_cold_ms"] = round((time.perf_counter() - t) * 1000, 3)
        assert len(page.items) == 50 and page.cursor
        for name, fn in cases.items():
            fn()
            figures[name] = _ms(_time(fn, iterations))
    finally:
        store.close()
    return figures


def run() -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="sdd-bench-store-"))
    try:
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        out["writes"] = asyncio.run(_writes(directory, workers=64, per_worker=40))
        out["engine_with_history"] = asyncio.run(_engine(directory, sequential=300, burst=1000))
        out["history_1m"] = _reads(directory, iterations=300)
        return out
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    import json
    print(json.dumps(run(), indent=2))
