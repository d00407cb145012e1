"""Child process for test_durability: runs a workflow on the real engine with the history recorder; its
non-idempotent step appends to a log, says so on stdout, and then hangs until the process is SIGKILLed.
With a third argument `idempotent` the step that hangs is an idempotent one instead."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from sdd.engine import Workflow, WorkflowEngine
from sdd.history.recorder import HistoryRecorder
from sdd.store import Store

WORKFLOW = {"workflow_id": "wf", "name": "crash", "steps": [
    {"step_id": "first", "type": "action", "action": "safe"},
    {"step_id": "hook", "type": "action", "action": "unsafe"},
    {"step_id": "last", "type": "action", "action": "safe"},
]}


IDEMPOTENT_WORKFLOW = {"workflow_id": "wf", "name": "crash", "steps": [
    {"step_id": "first", "type": "action", "action": "safe"},
    {"step_id": "slow", "type": "action", "action": "slow", "params": {"n": 1}},
]}


async def main(db: str, log: str, mode: str = "") -> None:
    store = Store.open(db)
    engine = WorkflowEngine(listeners=[HistoryRecorder(store)])

    async def safe(*, context: dict[str, Any], **params: Any) -> str:
        return "safe-done"

    async def unsafe(*, context: dict[str, Any], **params: Any) -> str:
        with open(log, "a") as f:  # noqa: ASYNC230 -- a tiny append; blocking is the point of the test
            f.write("side effect\n")
        print("acting", flush=True)
        await asyncio.Event().wait()  # never returns: the parent kills us here
        return "unreachable"

    async def slow(*, context: dict[str, Any], **params: Any) -> str:
        await store.flush()  # everything before this step is on disk: the crash is mid-step, nothing else
        print("acting", flush=True)
        await asyncio.Event().wait()  # never returns: the parent kills us here
        return "unreachable"

    engine.register_action("safe", safe, idempotent=True)
    engine.register_action("unsafe", unsafe, idempotent=False)
    engine.register_action("slow", slow, idempotent=True)
    wf = IDEMPOTENT_WORKFLOW if mode == "idempotent" else WORKFLOW
    await engine.execute_workflow(Workflow.from_dict(wf), run_id="the-run")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
