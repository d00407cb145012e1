"""Cancelling and interrupting runs, and resuming a run from its recorded steps (`prior`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sdd.engine import PriorStep, RunStatus, StepStatus, WorkflowEngine

from .conftest import Recorder, make_engine, wf


async def _started(engine: WorkflowEngine, rec: Recorder, workflow: Any, action: str = "slow", **kw: Any):
    rec.gates[action] = asyncio.Event()
    rec.started[action] = asyncio.Event()
    handle = engine.start(workflow, **kw)
    await rec.started[action].wait()
    return handle


async def test_cancel_stops_the_run_and_rolls_back_when_asked(engine: WorkflowEngine, rec: Recorder) -> None:
    handle = await _started(engine, rec, wf([
        {"step_id": "a", "action": "act", "rollback_action": "undo"},
        {"step_id": "b", "action": "slow"},
        {"step_id": "c", "action": "other"}], rollback_on_failure=True))
    assert handle.run_id in engine.active_runs
    assert handle.cancel() is True
    result = await handle.wait()
    assert result.status is RunStatus.CANCELLED
    assert result.step_results["b"].status is StepStatus.CANCELLED
    assert rec.names() == ["act", "slow", "undo"]
    assert handle.run_id not in engine.active_runs
    assert handle.cancel() is False


async def test_cancel_without_rollback_flag_just_stops(engine: WorkflowEngine, rec: Recorder) -> None:
    handle = await _started(engine, rec, wf([{"step_id": "a", "action": "act", "rollback_action": "undo"},
                                            {"step_id": "b", "action": "slow"}]))
    handle.cancel()
    result = await handle.wait()
    assert result.status is RunStatus.CANCELLED and "undo" not in rec.names()


async def test_interrupt_ends_interrupted_without_rollback(engine: WorkflowEngine, rec: Recorder) -> None:
    handle = await _started(engine, rec, wf([{"step_id": "a", "action": "act", "rollback_action": "undo"},
                                            {"step_id": "b", "action": "slow"}], rollback_on_failure=True))
    handle.cancel(interrupt=True)
    result = await handle.wait()
    assert result.status is RunStatus.INTERRUPTED
    assert result.step_results["b"].status is StepStatus.INTERRUPTED
    assert "undo" not in rec.names()


async def test_cancel_before_the_run_starts(engine: WorkflowEngine, rec: Recorder) -> None:
    handle = engine.start(wf([{"step_id": "a", "action": "act"}]))
    handle.cancel()
    result = await handle.wait()
    assert result.status is RunStatus.CANCELLED and rec.calls == []


async def test_cancelling_the_waiter_does_not_cancel_the_run(engine: WorkflowEngine, rec: Recorder) -> None:
    handle = await _started(engine, rec, wf([{"step_id": "a", "action": "slow"}]))
    waiter = asyncio.ensure_future(handle.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    rec.gates["slow"].set()
    assert (await handle.wait()).status is RunStatus.COMPLETED


async def test_cancelling_execute_workflow_cancels_the_run(engine: WorkflowEngine, rec: Recorder) -> None:
    rec.gates["slow"] = asyncio.Event()
    rec.started["slow"] = asyncio.Event()
    caller = asyncio.ensure_future(engine.execute_workflow(wf([{"step_id": "a", "action": "slow"}]),
                                                           run_id="r9"))
    await rec.started["slow"].wait()
    handle = engine.active_runs["r9"]
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert (await handle.wait()).status is RunStatus.CANCELLED


def _prior(**steps: Any) -> dict[str, PriorStep]:
    return {k: PriorStep(status=v[0], result=v[1] if len(v) > 1 else None, attempts=1) for k, v in steps.items()}


async def test_resume_reuses_completed_steps_without_calling_or_events(engine: WorkflowEngine,
                                                                       rec: Recorder) -> None:
    workflow = wf([{"step_id": "a", "action": "act", "output": "a_out"},
                   {"step_id": "b", "action": "other", "params": {"prev": "{{ steps.a.result }}"}}])
    result = await engine.execute_workflow(workflow, prior=_prior(a=("completed", "old")), run_id="r")
    assert rec.names() == ["other"] and rec.calls[0][1] == {"prev": "old"}
    assert result.context["a_out"] == "old"
    assert [n for n in rec.event_names() if n.endswith(":a")] == []
    assert rec.events[0].resumed is True


async def test_resume_reruns_an_idempotent_step_in_flight(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "act"}]),
                                           prior=_prior(a=("running",)))
    assert result.status is RunStatus.COMPLETED and rec.names() == ["act"]


async def test_resume_non_idempotent_step_in_flight_fails_interrupted(engine: WorkflowEngine,
                                                                      rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([{"step_id": "s", "type": "script", "params": {"script": "x"}},
                                               {"step_id": "after", "action": "act"}]),
                                           prior=_prior(s=("running",)))
    assert result.status is RunStatus.INTERRUPTED
    assert result.step_results["s"].status is StepStatus.INTERRUPTED
    assert rec.calls == []


async def test_resume_on_interrupt_retry_runs_it_again(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([{"step_id": "s", "type": "script", "params": {"script": "x"}}],
                                              on_interrupt="retry"), prior=_prior(s=("running",)))
    assert result.status is RunStatus.COMPLETED and rec.names() == ["run_script"]


async def test_resume_on_interrupt_rollback_undoes_earlier_steps(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(
        wf([{"step_id": "q", "action": "act", "rollback_action": "undo", "params": {"f": 1}},
            {"step_id": "s", "type": "script", "params": {"script": "x"}}], on_interrupt="rollback"),
        prior=_prior(q=("completed", {"f": 1}), s=("running",)))
    assert result.status is RunStatus.ROLLED_BACK
    assert rec.names() == ["undo"]
    assert result.step_results["s"].status is StepStatus.INTERRUPTED
    assert result.step_results["q"].status is StepStatus.ROLLED_BACK


async def test_resume_inside_a_loop_uses_item_paths(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(
        wf([{"step_id": "l", "type": "loop", "items": "[1, 2, 3]",
             "step": {"step_id": "x", "action": "act", "params": {"n": "{{ context.item }}"}}}]),
        prior=_prior(**{"l[0].x": ("completed", "r0"), "l[1].x": ("running",)}))
    assert [c[1]["n"] for c in rec.calls] == [2, 3]
    assert result.step_results["l"].result[0] == "r0"


async def test_events_are_delivered_in_order_and_awaited() -> None:
    rec = Recorder()
    order: list[str] = []

    async def slow_listener(event: Any) -> None:
        await asyncio.sleep(0)
        order.append(f"listener:{type(event).__name__}")

    engine = make_engine(rec)
    engine.add_listener(slow_listener)

    async def handler(*, context: dict[str, Any]) -> None:
        order.append("handler")
    engine.register_action("h", handler)
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "h"}]), detection={"id": "d7"})
    assert order == ["listener:RunStarted", "listener:StepStarted", "handler", "listener:StepFinished",
                     "listener:RunFinished"]
    started, step_started, step_finished, finished = rec.events
    assert started.detection_id == "d7" and started.workflow.workflow_id == "test" and not started.dry_run
    assert step_started.step_id == "a" and step_started.phase == "run" and step_started.attempt == 1
    assert step_finished.status == "completed" and step_finished.attempts == 1
    assert finished.status == "completed" and finished.result is result


async def test_a_failing_listener_does_not_break_the_run(rec: Recorder) -> None:
    def broken(event: Any) -> None:
        raise RuntimeError("listener bug")
    engine = make_engine(rec)
    engine.add_listener(broken)
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "act"}]))
    assert result.status is RunStatus.COMPLETED


async def test_skipped_steps_get_started_and_finished_events(engine: WorkflowEngine, rec: Recorder) -> None:
    await engine.execute_workflow(wf([{"step_id": "a", "action": "act", "condition": "1 == 2"}]))
    kinds = [(type(e).__name__, getattr(e, "status", None)) for e in rec.events[1:3]]
    assert kinds == [("StepStarted", None), ("StepFinished", "skipped")]


async def test_a_non_idempotent_step_does_not_act_when_its_intent_cannot_be_recorded(rec: Recorder) -> None:
    """The intent of a step that must not run twice is recorded before it acts; if that fails, it does not act."""
    failures = {"left": 1}

    async def flaky_store(event: Any) -> None:
        if type(event).__name__ == "StepStarted" and not event.idempotent and failures["left"]:
            failures["left"] -= 1
            raise OSError("disk full")

    engine = make_engine(rec)
    engine.add_listener(flaky_store)
    result = await engine.execute_workflow(wf([{"step_id": "s", "action": "run_script", "max_retries": 1,
                                                "retry_delay": 0}]))
    assert result.status is RunStatus.COMPLETED
    assert rec.names() == ["run_script"]  # the first attempt never ran; the retry, whose intent was recorded, did
    failures["left"] = 5
    result = await engine.execute_workflow(wf([{"step_id": "s", "action": "run_script"}]))
    assert result.status is RunStatus.FAILED
    assert "could not record the step's intent" in (result.step_results["s"].error or "")
    assert rec.names() == ["run_script"]  # still only the one call
