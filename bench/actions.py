"""Benchmarks of the built-in actions on real files in a temp dir: quarantine/restore latency, vault
throughput on a big file, a small containment workflow through the engine, and guard overhead."""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sdd.actions import ActionServices, builtin_actions
from sdd.config import ActionsConfig, RateLimit
from sdd.engine import Workflow, WorkflowEngine


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _bench(tmp: Path) -> dict[str, Any]:
    root, state = tmp / "root", tmp / "state"
    root.mkdir()
    config = ActionsConfig(allowed_roots=(root,), rate_limits={"quarantine_file": RateLimit(10**9, 60.0)})
    services = ActionServices(config, state)
    actions = {s.name: s for s in builtin_actions(services)}
    quarantine, restore = actions["quarantine_file"].handler, actions["restore_file"].handler

    n = 200
    q_times, r_times = [], []
    for i in range(n):
        path = root / f"f{i}.exe"
        path.write_bytes(os.urandom(4096))
        t = time.perf_counter()
        res = await quarantine(file_path=str(path), context={})
        q_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        await restore(quarantine_id=res["quarantine_id"], context={})
        r_times.append(time.perf_counter() - t)

    big = root / "big.iso"
    size = 64 << 20
    big.write_bytes(os.urandom(size))
    t = time.perf_counter()
    res = await quarantine(file_path=str(big), context={})
    q_big = time.perf_counter() - t
    t = time.perf_counter()
    await restore(quarantine_id=res["quarantine_id"], context={})
    r_big = time.perf_counter() - t

    engine = WorkflowEngine(actions=actions.values(), listeners=[services.run_log])
    wf = Workflow.from_dict({"workflow_id": "bench", "steps": [
        {"step_id": "q", "action": "quarantine_file", "params": {"file_path": "{{ detection.file_path }}"}},
        {"step_id": "r", "action": "generate_report", "params": {"format": "json"}},
        {"step_id": "n", "type": "notification", "params": {"channel": "log", "message": "done"}}]})
    runs = []
    for i in range(50):
        path = root / f"w{i}.exe"
        path.write_bytes(b"x" * 1024 + str(i).encode())
        t = time.perf_counter()
        result = await engine.execute_workflow(wf, detection={"file_path": str(path)})
        runs.append(time.perf_counter() - t)
        assert result.status.value == "completed", result.error

    guards = services.guards
    k = 100_000
    t = time.perf_counter()
    for _ in range(k):
        guards.acquire("send_notification")  # unlimited: the common path
    free_ns = (time.perf_counter() - t) / k * 1e9
    t = time.perf_counter()
    for _ in range(k):
        guards.acquire("quarantine_file")
    limited_ns = (time.perf_counter() - t) / k * 1e9

    ms = 1000.0
    return {
        "quarantine_4k_ms_p50": round(statistics.median(q_times) * ms, 3),
        "quarantine_4k_ms_p99": round(_pct(q_times, 0.99) * ms, 3),
        "restore_4k_ms_p50": round(statistics.median(r_times) * ms, 3),
        "restore_4k_ms_p99": round(_pct(r_times, 0.99) * ms, 3),
        "quarantine_64MiB_MBps": round(size / q_big / 1e6, 1),
        "restore_64MiB_MBps": round(size / r_big / 1e6, 1),
        "workflow_quarantine_report_notify_ms_p50": round(statistics.median(runs) * ms, 3),
        "workflow_quarantine_report_notify_ms_p99": round(_pct(runs, 0.99) * ms, 3),
        "guard_acquire_unlimited_ns": round(free_ns, 1),
        "guard_acquire_rate_limited_ns": round(limited_ns, 1),
    }


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sdd-bench-actions-") as tmp:
        return asyncio.run(_bench(Path(tmp)))


if __name__ == "__main__":
    import json
    print(json.dumps(run(), indent=2))
