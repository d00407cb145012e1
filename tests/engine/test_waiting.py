"""`report_waiting()`: a handler tells its engine that the step waits before acting (a guard holds it); the
listeners see `StepWaiting` between the step's start and its end, and the resume of a `waiting` step runs it."""

from __future__ import annotations

from typing import Any

from sdd.engine import (
    PriorStep,
    StepFinished,
    StepStarted,
    StepStatus,
    StepWaiting,
    Workflow,
    WorkflowEngine,
    report_waiting,
)

WF = Workflow.from_dict({"workflow_id": "w", "steps": [{"step_id": "held", "action": "held"}]})


async def _held(*, context: dict[str, Any], **params: Any) -> str:
    await report_waiting("rate limit reached", 42.0)
    await report_waiting(None, 42.0)
    return "acted"


async def test_step_waiting_events_come_between_start_and_finish() -> None:
    events: list[Any] = []
    engine = WorkflowEngine(listeners=[events.append])
    engine.register_action("held", _held, idempotent=True)
    result = await engine.execute_workflow(WF)
    assert result.status.value == "completed"
    kinds = [type(e).__name__ for e in events if isinstance(e, (StepStarted, StepWaiting, StepFinished))]
    assert kinds == ["StepStarted", "StepWaiting", "StepWaiting", "StepFinished"]
    waits = [e for e in events if isinstance(e, StepWaiting)]
    assert [(w.step_id, w.reason, w.since) for w in waits] == [("held", "rate limit reached", 42.0),
                                                               ("held", None, 42.0)]


async def test_report_waiting_outside_a_step_does_nothing() -> None:
    await report_waiting("nobody listens")


async def test_a_step_left_waiting_by_a_crash_is_run_again_on_resume() -> None:
    calls: list[str] = []

    async def once(*, context: dict[str, Any], **params: Any) -> str:
        calls.append("ran")
        return "acted"

    engine = WorkflowEngine()
    engine.register_action("held", once, idempotent=False)  # it never acted: even a non-idempotent one re-runs
    handle = engine.start(WF, prior={"held": PriorStep(status=StepStatus.WAITING, result=None, attempts=1,
                                                       error=None)})
    result = await handle.wait()
    assert result.status.value == "completed" and calls == ["ran"]
