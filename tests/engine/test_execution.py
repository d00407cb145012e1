"""Running sequential workflows: order, conditions, context, retries, timeouts, failure modes, rollback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sdd.engine import (
    ActionError,
    Forbidden,
    InvalidParams,
    NotFound,
    RunStatus,
    StepStatus,
    Workflow,
    WorkflowEngine,
    WorkflowStep,
    current_step,
)
from sdd.engine.attempt import retry_delay

from .conftest import Recorder, wf


async def test_simple_workflow_completes(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "act", "params": {"x": 1}}]))
    assert result.status is RunStatus.COMPLETED
    assert result.steps_completed == 1 and result.steps_failed == 0 and result.steps_skipped == 0
    assert result.step_results["a"].result == {"action": "act", "x": 1}
    assert result.error is None and result.execution_time >= 0


async def test_steps_run_in_order(engine: WorkflowEngine, rec: Recorder) -> None:
    steps = [{"step_id": f"s{i}", "action": "act", "params": {"i": i}} for i in range(5)]
    await engine.execute_workflow(wf(steps))
    assert [c[1]["i"] for c in rec.calls] == [0, 1, 2, 3, 4]


async def test_code_built_workflow_with_original_field_names(engine: WorkflowEngine, rec: Recorder) -> None:
    workflow = Workflow(workflow_id="w", name="W", description="d", steps=[
        WorkflowStep(step_id="scan", name="Scan", step_type="action", action="act",
                     params={"path": "/home"}, on_failure="retry", retries=2),
        WorkflowStep(step_id="notify", name="Notify", step_type="notification",
                     params={"recipient": "root"}, condition='context.get("threats_found", 0) > 0'),
    ])
    workflow.context["threats_found"] = 1
    assert workflow.steps[0].max_retries == 2 and workflow.steps[0].retries == 2
    assert workflow.steps[1].action == "send_notification"
    result = await engine.execute_workflow(workflow)
    assert result.status == "completed"
    assert rec.names() == ["act", "send_notification"]


async def test_condition_true_runs_and_false_skips(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([
        {"step_id": "yes", "action": "act", "condition": "context.n > 1"},
        {"step_id": "no", "action": "other", "condition": "context.n > 5"},
    ]), {"n": 3})
    assert rec.names() == ["act"]
    assert result.step_results["no"].status is StepStatus.SKIPPED
    assert result.step_results["no"].reason == "condition is false"
    assert result.steps_skipped == 1 and result.status is RunStatus.COMPLETED


async def test_condition_that_is_not_boolean_fails_the_step(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "act", "condition": "'false'"}]))
    assert result.status is RunStatus.FAILED
    assert "not true/false" in (result.step_results["a"].error or "")
    assert rec.calls == []


async def test_params_are_rendered_from_detection_and_context(engine: WorkflowEngine, rec: Recorder) -> None:
    await engine.execute_workflow(wf([{"step_id": "a", "action": "act", "params": {
        "file_path": "{{ detection.file_path }}", "pid": "{{ detection.process_id }}",
        "msg": "found {{ detection.threat }} in {{ detection.file_path }} ({{ context.who }})"}}]),
        {"who": "root"}, detection={"file_path": "/tmp/x", "process_id": 7, "threat": "{{ context.who }}"})
    assert rec.calls[0][1] == {"file_path": "/tmp/x", "pid": 7,
                               "msg": "found {{ context.who }} in /tmp/x (root)"}


async def test_context_is_shared_and_output_stores_results(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([
        {"step_id": "a", "action": "set_ctx", "params": {"key": "threats_found", "value": 2}},
        {"step_id": "b", "action": "act", "params": {"n": "{{ context.threats_found }}"}, "output": "b_out"},
        {"step_id": "c", "action": "act", "condition": 'context.get("threats_found", 0) > 0 and '
                                                      'steps.b.status == "completed"',
         "params": {"prev": "{{ steps.b.result.n }}", "out": "{{ context.b_out.action }}"}},
    ]))
    assert result.context["threats_found"] == 2
    assert result.context["b_out"] == {"action": "act", "n": 2}
    assert rec.calls[-1][1] == {"prev": 2, "out": "act"}


async def test_workflow_context_is_copied_per_run(engine: WorkflowEngine) -> None:
    workflow = wf([{"step_id": "a", "action": "set_ctx", "params": {"key": "k", "value": 1}}], context={"base": 1})
    await engine.execute_workflow(workflow)
    assert workflow.context == {"base": 1}


async def test_retry_until_success(engine: WorkflowEngine, rec: Recorder) -> None:
    rec.failures["act"] = 2
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "act", "max_retries": 3,
                                                "retry_delay": 0}]))
    assert result.status is RunStatus.COMPLETED
    assert result.step_results["a"].attempts == 3
    assert [c[3] for c in rec.calls] == [1, 2, 3]


async def test_max_retries_exceeded_fails(engine: WorkflowEngine, rec: Recorder) -> None:
    rec.failures["act"] = 10
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "act", "retries": 2,
                                                "retry_delay": 0}]))
    assert result.status is RunStatus.FAILED
    assert len(rec.calls) == 3
    assert result.step_results["a"].attempts == 3
    assert "failed on purpose" in (result.error or "")


async def test_on_failure_retry_defaults_to_three_retries(engine: WorkflowEngine, rec: Recorder) -> None:
    rec.failures["act"] = 10
    await engine.execute_workflow(wf([{"step_id": "a", "action": "act", "on_failure": "retry",
                                       "retry_delay": 0}]))
    assert len(rec.calls) == 4


@pytest.mark.parametrize("exc", [InvalidParams("bad"), Forbidden("no"), NotFound("gone"),
                                 ActionError("final", retryable=False)])
async def test_non_retryable_errors_are_not_retried(exc: Exception) -> None:
    engine = WorkflowEngine()
    calls = []

    async def handler(*, context: dict[str, Any]) -> None:
        calls.append(1)
        raise exc
    engine.register_action("h", handler)
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "h", "max_retries": 5,
                                                "retry_delay": 0}]))
    assert calls == [1]
    assert result.status is RunStatus.FAILED
    assert type(exc).__name__ in (result.step_results["a"].error or "") or "final" in (result.error or "")


async def test_other_exceptions_are_retryable() -> None:
    engine = WorkflowEngine()
    calls = []

    async def handler(*, context: dict[str, Any]) -> str:
        calls.append(1)
        if len(calls) < 2:
            raise OSError("transient")
        return "ok"
    engine.register_action("h", handler)
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "h", "max_retries": 1,
                                                "retry_delay": 0}]))
    assert result.status is RunStatus.COMPLETED and len(calls) == 2


def test_retry_delay_backs_off_and_is_capped_with_bounded_jitter() -> None:
    step = WorkflowStep(step_id="a", retry_delay=1.0, backoff=2.0, max_delay=5.0, jitter=0.0)
    assert [retry_delay(step, n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittery = WorkflowStep(step_id="a", retry_delay=1.0, backoff=2.0, max_delay=30.0, jitter=0.5)
    for _ in range(200):
        assert 1.0 <= retry_delay(jittery, 2) <= 3.0
    assert retry_delay(WorkflowStep(step_id="a", retry_delay=0), 3) == 0.0


async def test_attempt_timeout_fails_the_step(engine: WorkflowEngine, rec: Recorder) -> None:
    rec.gates["slow"] = asyncio.Event()   # never set: the handler waits until cancelled
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "slow", "timeout": 0.05}]))
    assert result.status is RunStatus.FAILED
    assert "timed out after 0.05s" in (result.step_results["a"].error or "")


async def test_timed_out_attempts_are_retried(engine: WorkflowEngine, rec: Recorder) -> None:
    rec.gates["slow"] = asyncio.Event()
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "slow", "timeout": 0.02,
                                                "max_retries": 2, "retry_delay": 0}]))
    assert result.step_results["a"].attempts == 3
    assert len(rec.calls) == 3


async def test_total_timeout_bounds_all_attempts(engine: WorkflowEngine, rec: Recorder) -> None:
    rec.gates["slow"] = asyncio.Event()
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "slow", "total_timeout": 0.05,
                                                "max_retries": 100, "retry_delay": 0}]))
    assert result.status is RunStatus.FAILED
    assert "step timed out after 0.05s" in (result.step_results["a"].error or "")


async def test_run_timeout_cancels_the_running_step(engine: WorkflowEngine, rec: Recorder) -> None:
    rec.gates["slow"] = asyncio.Event()
    cancelled = asyncio.Event()

    async def watcher(*, context: dict[str, Any]) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()   # where a real action kills its subprocess
            raise
    engine.register_action("watch", watcher)
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "watch"},
                                               {"step_id": "b", "action": "act"}], timeout=0.05))
    assert result.status is RunStatus.FAILED
    assert result.error == "run timed out after 0.05s"
    assert cancelled.is_set()
    assert result.step_results["a"].status is StepStatus.CANCELLED
    assert "b" not in result.step_results


async def test_unknown_action_fails_the_step(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "nope"},
                                               {"step_id": "b", "action": "act"}]))
    assert result.status is RunStatus.FAILED
    assert "unknown action 'nope'" in (result.step_results["a"].error or "")
    assert rec.calls == []


async def test_default_on_failure_is_abort(engine: WorkflowEngine, rec: Recorder) -> None:
    assert WorkflowStep(step_id="x").on_failure == "abort"
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "boom"},
                                               {"step_id": "b", "action": "act"}]))
    assert result.status is RunStatus.FAILED and result.steps_failed == 1
    assert "act" not in rec.names()


async def test_on_failure_continue_runs_the_rest(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "boom", "on_failure": "continue"},
                                               {"step_id": "b", "action": "act"}]))
    assert result.status is RunStatus.COMPLETED
    assert result.step_results["a"].status is StepStatus.FAILED
    assert result.steps_failed == 1 and rec.names() == ["boom", "act"]


async def test_on_failure_skip_marks_the_step_skipped(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "boom", "on_failure": "skip"},
                                               {"step_id": "b", "action": "act"}]))
    assert result.status is RunStatus.COMPLETED
    assert result.step_results["a"].status is StepStatus.SKIPPED
    assert result.step_results["a"].error == "boom"


async def test_failure_without_rollback_leaves_completed_steps(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([
        {"step_id": "a", "action": "act", "rollback_action": "undo"},
        {"step_id": "b", "action": "boom"}]))
    assert result.status is RunStatus.FAILED
    assert "undo" not in rec.names()
    assert result.step_results["a"].status is StepStatus.COMPLETED


async def test_rollback_runs_in_reverse_order(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([
        {"step_id": "a", "action": "act", "params": {"n": 1}, "rollback_action": "undo"},
        {"step_id": "b", "action": "act", "params": {"n": 2}},
        {"step_id": "c", "action": "act", "params": {"n": 3}, "rollback_action": "undo"},
        {"step_id": "d", "action": "boom"}], rollback_on_failure=True))
    assert result.status is RunStatus.ROLLED_BACK
    undo = [c for c in rec.calls if c[0] == "undo"]
    assert [c[1]["n"] for c in undo] == [3, 1]
    assert result.step_results["a"].status is StepStatus.ROLLED_BACK
    assert result.step_results["b"].status is StepStatus.COMPLETED
    assert rec.event_names("rollback") == ["StepStarted:c", "StepFinished:c", "StepStarted:a", "StepFinished:a"]


async def test_on_failure_rollback_rolls_back_without_workflow_flag(engine: WorkflowEngine,
                                                                    rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([
        {"step_id": "a", "action": "act", "rollback_action": "undo"},
        {"step_id": "b", "action": "boom", "on_failure": "rollback"}]))
    assert result.status is RunStatus.ROLLED_BACK
    assert rec.names() == ["act", "boom", "undo"]


async def test_failing_rollback_is_recorded_and_the_others_still_run(engine: WorkflowEngine,
                                                                    rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([
        {"step_id": "a", "action": "act", "rollback_action": "undo"},
        {"step_id": "b", "action": "act", "rollback_action": "boom"},
        {"step_id": "c", "action": "boom"}], rollback_on_failure=True))
    assert result.status is RunStatus.FAILED
    assert "rollback incomplete" in (result.error or "")
    assert rec.names()[-2:] == ["boom", "undo"]
    assert result.step_results["b"].rollback_error == "boom"
    assert result.step_results["a"].status is StepStatus.ROLLED_BACK
    finished = [e for e in rec.events if getattr(e, "phase", "") == "rollback" and type(e).__name__ == "StepFinished"]
    assert [(e.step_id, e.status) for e in finished] == [("b", "failed"), ("a", "rolled_back")]


async def test_rollback_params_can_use_the_step_result(engine: WorkflowEngine, rec: Recorder) -> None:
    seen = []

    async def restore(*, context: dict[str, Any], **params: Any) -> None:
        info = current_step()
        seen.append((params, info.phase if info else None, info.step_result if info else None))
    engine.register_action("restore", restore)
    await engine.execute_workflow(wf([
        {"step_id": "q", "action": "act", "params": {"file_path": "/x"}, "rollback_action": "restore",
         "rollback_params": {"id": "{{ steps.q.result.file_path }}"}},
        {"step_id": "b", "action": "boom"}], rollback_on_failure=True))
    assert seen == [({"id": "/x"}, "rollback", {"action": "act", "file_path": "/x"})]


async def test_current_step_tells_the_handler_where_it_is(engine: WorkflowEngine) -> None:
    seen = []

    async def handler(*, context: dict[str, Any]) -> None:
        seen.append(current_step())
    engine.register_action("who", handler)
    await engine.execute_workflow(wf([{"step_id": "me", "action": "who"}], workflow_id="wfx"),
                                  run_id="r1", detection={"id": "d1"})
    info = seen[0]
    assert (info.run_id, info.workflow_id, info.step_id, info.attempt) == ("r1", "wfx", "me", 1)
    assert info.idempotency_key == "r1:me" and info.detection == {"id": "d1"} and info.dry_run is False
    assert current_step() is None


async def test_sync_handlers_are_accepted() -> None:
    engine = WorkflowEngine()
    engine.register_action("sync", lambda *, context, **p: {"ok": True})  # type: ignore[arg-type,return-value]
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "sync"}]))
    assert result.step_results["a"].result == {"ok": True}


async def test_many_concurrent_runs_do_not_share_state(engine: WorkflowEngine, rec: Recorder) -> None:
    workflow = wf([{"step_id": "a", "action": "set_ctx", "params": {"key": "n", "value": "{{ context.i }}"}},
                   {"step_id": "b", "action": "act", "params": {"n": "{{ context.n }}"}}])
    handles = [engine.start(workflow, {"i": i}) for i in range(50)]
    results = [await h.wait() for h in handles]
    assert [r.context["n"] for r in results] == list(range(50))
    assert not engine.active_runs


async def test_timed_out_step_gets_cancelled_so_it_can_kill_its_subprocess() -> None:
    """The engine cancels the handler; an action that started a process kills it on CancelledError."""
    engine = WorkflowEngine()
    procs: list[asyncio.subprocess.Process] = []

    async def run_sleep(*, context: dict[str, Any]) -> None:
        proc = await asyncio.create_subprocess_exec("sleep", "30")
        procs.append(proc)
        try:
            await proc.wait()
        except asyncio.CancelledError:
            proc.kill()
            await proc.wait()
            raise
    engine.register_action("sleep", run_sleep)
    result = await engine.execute_workflow(wf([{"step_id": "s", "action": "sleep", "timeout": 0.2}]))
    assert result.status is RunStatus.FAILED
    assert "timed out" in (result.step_results["s"].error or "")
    assert procs and procs[0].returncode is not None   # reaped: the process is gone


async def test_an_engine_bug_ends_the_run_failed_instead_of_leaking(engine: WorkflowEngine,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from sdd.engine import composite

    async def broken(*args: Any) -> None:
        raise KeyError("bug")
    monkeypatch.setattr(composite, "_dispatch", broken)
    result = await engine.execute_workflow(wf([{"step_id": "p", "type": "parallel",
                                                "steps": [{"step_id": "a", "action": "act"}]}]))
    assert result.status is RunStatus.FAILED
    assert "internal engine error: KeyError" in (result.error or "")


async def test_run_timeout_message_with_handler_raising_its_own_timeout_error() -> None:
    engine = WorkflowEngine()

    async def raises(*, context: dict[str, Any]) -> None:
        raise TimeoutError("socket timed out")
    engine.register_action("t", raises)
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "t"}]))
    assert result.status is RunStatus.FAILED
    assert result.step_results["a"].error == "TimeoutError: socket timed out"


def test_run_ids_are_32_hex_digits_unique_and_in_time_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """UUIDv7-like: history B-trees grow at their right edge, and ids stay unguessable."""
    import re
    import time

    from sdd.engine import new_run_id

    ids = [new_run_id() for _ in range(2000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert len({i[12:] for i in ids}) == len(ids)  # the random part alone differs too
    now = time.time_ns()
    monkeypatch.setattr(time, "time_ns", lambda: now + 5_000_000)  # 5 ms later
    later = new_run_id()
    assert later > max(ids) and int(later[:12], 16) == (now + 5_000_000) // 1_000_000


def test_a_forked_child_never_repeats_the_parents_run_id_randomness() -> None:
    import os

    from sdd.engine import new_run_id

    new_run_id()  # the parent's pool is filled
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child
        try:
            os.write(w, new_run_id()[12:].encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        child = os.read(r, 64).decode()
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert len(child) == 20 and child != new_run_id()[12:]
