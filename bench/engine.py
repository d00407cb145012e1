"""Engine figures: per-step engine overhead for 5- and 50-step no-op workflows, and five-step runs per
second in one process (one event loop, runs started back to back and in batches)."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from sdd.engine import Workflow, WorkflowEngine, WorkflowStep


async def _noop(*, context: dict[str, Any], **params: Any) -> None:
    return None


def _workflow(n: int) -> Workflow:
    return Workflow(workflow_id=f"noop{n}", name=f"{n} no-op steps",
                    steps=[WorkflowStep(step_id=f"s{i}", action="noop", params={"i": i}) for i in range(n)])


async def _baseline(n: int, runs: int) -> float:
    """Seconds per run of the same no-op handler awaited directly n times (the asyncio floor)."""
    params = {"i": 0}

    async def direct() -> None:
        ctx: dict[str, Any] = {}
        for _ in range(n):
            await _noop(**params, context=ctx)
    t0 = time.perf_counter()
    for _ in range(runs):
        await asyncio.get_running_loop().create_task(direct())
    return (time.perf_counter() - t0) / runs


async def _sequential(engine: WorkflowEngine, wf: Workflow, runs: int) -> float:
    t0 = time.perf_counter()
    for _ in range(runs):
        await engine.execute_workflow(wf)
    return (time.perf_counter() - t0) / runs


async def _throughput(engine: WorkflowEngine, wf: Workflow, seconds: float, batch: int = 100) -> float:
    done = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        handles = [engine.start(wf) for _ in range(batch)]
        for h in handles:
            await h.wait()
        done += batch
    return done / (time.perf_counter() - t0)


async def _measure() -> dict[str, Any]:
    out: dict[str, Any] = {}
    engine = WorkflowEngine()
    engine.register_action("noop", _noop, idempotent=True)
    listened = WorkflowEngine(listeners=[lambda event: None])
    listened.register_action("noop", _noop, idempotent=True)
    for n, runs in ((5, 20_000), (50, 2_000)):
        wf = _workflow(n)
        await _sequential(engine, wf, runs // 10)  # warm up
        best = min([await _sequential(engine, wf, runs) for _ in range(3)])
        floor = min([await _baseline(n, runs) for _ in range(3)])
        with_listener = min([await _sequential(listened, wf, runs) for _ in range(2)])
        out[f"overhead_us_per_step_{n}"] = round((best - floor) / n * 1e6, 2)
        out[f"overhead_us_per_step_{n}_with_listener"] = round((with_listener - floor) / n * 1e6, 2)
        out[f"run_us_{n}_steps"] = round(best * 1e6, 1)
    wf5 = _workflow(5)
    out["five_step_runs_per_s"] = round(max([await _throughput(engine, wf5, 1.0) for _ in range(3)]))
    out["five_step_runs_per_s_with_listener"] = round(await _throughput(listened, wf5, 1.0))
    out["targets"] = {"overhead_us_per_step": 25, "five_step_runs_per_s": 10_000}
    return out


def run() -> dict[str, Any]:
    gc.collect()
    return asyncio.run(_measure())


if __name__ == "__main__":
    import json
    print(json.dumps(run(), indent=2))
