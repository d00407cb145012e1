"""The engine listener's bookkeeping of run slots (sdd/daemon/reporting.py), on a real engine and hub: a run
whose final record is being committed tells the dispatcher so, and a run whose record could not be committed
still frees its slot, unannounced."""

from __future__ import annotations

import asyncio
from typing import Any

from sdd import hub as events
from sdd.daemon.reporting import RunReporter
from sdd.engine import Workflow, WorkflowEngine
from sdd.engine.events import EngineEvent, RunFinished
from sdd.hub import EventHub


class _FailingCommit:
    """A recorder whose commit of a run's final record fails (as a full disk's would); nothing else awaited."""

    def __call__(self, ev: EngineEvent) -> Any:
        if isinstance(ev, RunFinished):
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(OSError(28, "No space left on device"))
            return failed
        return None


async def test_a_run_whose_record_fails_to_commit_frees_its_slot_and_is_not_announced() -> None:
    engine = WorkflowEngine(workflows={})
    engine.register_action("noop", lambda **_: {}, idempotent=True)
    hub = EventHub()
    sub = hub.subscribe()
    calls: list[tuple[str, str]] = []
    engine.add_listener(RunReporter(
        engine, _FailingCommit(), hub, {"runs_finished": 0}, None,  # type: ignore[arg-type]
        slot_freed=lambda rid: calls.append(("freed", rid)), run_waiting=lambda rid, w: None,
        run_recording=lambda rid: calls.append(("recording", rid)), on_change=lambda: None))
    workflow = Workflow.from_dict({"workflow_id": "w", "name": "w", "steps": [
        {"step_id": "a", "type": "action", "action": "noop"}]})
    result = await engine.execute_workflow(workflow)
    assert calls == [("recording", result.run_id), ("freed", result.run_id)]
    published = [e.name for e in sub.take()]
    assert events.RUN_STARTED in published and events.RUN_FINISHED not in published
