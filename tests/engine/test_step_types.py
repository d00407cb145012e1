"""Every step type: notification/script/webhook shorthands, condition, loop, parallel, branch, workflow."""

from __future__ import annotations

import asyncio
from typing import Any

from sdd.engine import RunStatus, StepStatus, WorkflowEngine

from .conftest import Recorder, make_engine, wf


async def test_shorthand_types_call_their_builtin_actions(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([
        {"step_id": "n", "type": "notification", "params": {"title": "t", "body": "b"}},
        {"step_id": "s", "type": "script", "params": {"script": "collect.sh", "args": ["{{ detection.x }}"]}},
        {"step_id": "w", "type": "webhook", "params": {"url": "http://127.0.0.1:1/hook"}},
    ]), detection={"x": "/tmp/f"})
    assert result.status is RunStatus.COMPLETED
    assert rec.names() == ["send_notification", "run_script", "call_webhook"]
    assert rec.calls[1][1] == {"script": "collect.sh", "args": ["/tmp/f"]}


async def test_condition_step_stops_the_run_when_false(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([
        {"step_id": "gate", "type": "condition", "condition": "detection.severity == 'critical'"},
        {"step_id": "a", "action": "act"}]), detection={"severity": "low"})
    assert result.status is RunStatus.COMPLETED
    assert result.step_results["gate"].result is False
    assert rec.calls == []


async def test_condition_step_passes_when_true(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([
        {"step_id": "gate", "type": "condition", "condition": "detection.severity == 'critical'"},
        {"step_id": "a", "action": "act"}]), detection={"severity": "critical"})
    assert result.step_results["gate"].result is True and rec.names() == ["act"]


async def test_condition_step_on_false_fail_and_continue(engine: WorkflowEngine, rec: Recorder) -> None:
    failed = await engine.execute_workflow(wf([
        {"step_id": "gate", "type": "condition", "condition": "1 == 2", "on_false": "fail"},
        {"step_id": "a", "action": "act"}]))
    assert failed.status is RunStatus.FAILED and rec.calls == []
    went_on = await engine.execute_workflow(wf([
        {"step_id": "gate", "type": "condition", "condition": "1 == 2", "on_false": "continue"},
        {"step_id": "a", "action": "act", "condition": "steps.gate.result == False"}]))
    assert went_on.status is RunStatus.COMPLETED and rec.names() == ["act"]


async def test_loop_runs_children_per_item_with_deterministic_paths(engine: WorkflowEngine,
                                                                   rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([
        {"step_id": "each", "type": "loop", "items": "{{ context.files }}", "as": "file",
         "steps": [{"step_id": "scan", "action": "act", "params": {"path": "{{ context.file }}",
                                                                   "i": "{{ context.loop_index }}"}},
                   {"step_id": "note", "action": "other", "params": {"prev": "{{ steps.scan.result.path }}"}}],
         "output": "scanned"}]), {"files": ["/a", "/b", "/c"]})
    assert result.status is RunStatus.COMPLETED
    assert rec.paths("act") == ["each[0].scan", "each[1].scan", "each[2].scan"]
    assert [c[1]["prev"] for c in rec.calls if c[0] == "other"] == ["/a", "/b", "/c"]
    assert [r["scan"]["path"] for r in result.context["scanned"]] == ["/a", "/b", "/c"]
    assert result.step_results["each[1].note"].status is StepStatus.COMPLETED


async def test_loop_over_a_literal_list_with_a_single_step(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([
        {"step_id": "each", "type": "loop", "items": [1, "{{ context.x }}"],
         "step": {"step_id": "a", "action": "act", "params": {"v": "{{ context.item }}"}}}]), {"x": 9})
    assert [c[1]["v"] for c in rec.calls] == [1, 9]
    assert result.step_results["each"].result == [{"action": "act", "v": 1}, {"action": "act", "v": 9}]


async def test_loop_concurrency_is_limited(rec: Recorder) -> None:
    engine = make_engine(rec)
    running = 0
    peak = 0
    release = asyncio.Event()
    entered = asyncio.Event()

    async def work(*, context: dict[str, Any], n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 2:
            entered.set()
        await release.wait()
        running -= 1
        return n

    engine.register_action("work", work)
    handle = engine.start(wf([{"step_id": "l", "type": "loop", "items": "[1, 2, 3, 4, 5]", "concurrency": 2,
                               "step": {"step_id": "w", "action": "work", "params": {"n": "{{ context.item }}"}}}]))
    await entered.wait()
    release.set()
    result = await handle.wait()
    assert peak == 2
    assert result.step_results["l"].result == [1, 2, 3, 4, 5]


async def test_loop_items_that_are_not_a_list_fail_clearly(engine: WorkflowEngine) -> None:
    result = await engine.execute_workflow(wf([{"step_id": "l", "type": "loop", "items": "context.n",
                                                "step": {"step_id": "a", "action": "act"}}]), {"n": 3})
    assert result.status is RunStatus.FAILED
    assert "items must give a list, not int" in (result.step_results["l"].error or "")


async def test_parallel_runs_children_concurrently(rec: Recorder) -> None:
    engine = make_engine(rec)
    rec.gates["act"] = asyncio.Event()
    rec.started["other"] = asyncio.Event()
    handle = engine.start(wf([{"step_id": "p", "type": "parallel", "steps": [
        {"step_id": "one", "action": "act"}, {"step_id": "two", "action": "other"}]}]))
    await rec.started["other"].wait()       # "two" runs while "one" is still waiting
    rec.gates["act"].set()
    result = await handle.wait()
    assert result.status is RunStatus.COMPLETED
    assert set(result.step_results["p"].result) == {"one", "two"}
    assert result.step_results["p.one"].status is StepStatus.COMPLETED


async def test_parallel_first_failure_cancels_siblings(rec: Recorder) -> None:
    engine = make_engine(rec)
    rec.gates["slow"] = asyncio.Event()     # never set
    result = await engine.execute_workflow(wf([
        {"step_id": "p", "type": "parallel", "steps": [{"step_id": "hang", "action": "slow"},
                                                         {"step_id": "fail", "action": "boom"}]},
        {"step_id": "after", "action": "act"}]))
    assert result.status is RunStatus.FAILED
    assert result.step_results["p.hang"].status is StepStatus.CANCELLED
    assert result.step_results["p.fail"].status is StepStatus.FAILED
    assert result.step_results["p"].status is StepStatus.FAILED
    assert "after" not in result.step_results


async def test_parallel_without_fail_fast_lets_siblings_finish(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([
        {"step_id": "p", "type": "parallel", "fail_fast": False, "on_failure": "continue",
         "steps": [{"step_id": "ok", "action": "act"}, {"step_id": "fail", "action": "boom"}]},
        {"step_id": "after", "action": "other"}]))
    assert result.step_results["p.ok"].status is StepStatus.COMPLETED
    assert result.step_results["p"].status is StepStatus.FAILED
    assert result.status is RunStatus.COMPLETED and "other" in rec.names()


async def test_branch_takes_first_true_case(engine: WorkflowEngine, rec: Recorder) -> None:
    steps = [{"step_id": "b", "type": "branch", "conditions": [
        {"if": "context.n > 10", "then": [{"step_id": "big", "action": "act"}]},
        {"elif": "context.n > 5", "then": {"step_id": "mid", "action": "other"}},
        {"else": [{"step_id": "small", "action": "undo"}]}]}]
    for n, expected in ((20, "act"), (7, "other"), (1, "undo")):
        rec.calls.clear()
        result = await engine.execute_workflow(wf(steps), {"n": n})
        assert rec.names() == [expected]
    assert result.step_results["b"].result["taken"] == "else"
    assert "b.small" in result.step_results


async def test_branch_then_can_name_a_workflow(rec: Recorder) -> None:
    target = wf([{"step_id": "inner", "action": "act", "params": {"who": "{{ context.who }}"}}],
                workflow_id="critical_response", context={"who": "default"})
    engine = make_engine(rec, workflows={"critical_response": target})
    result = await engine.execute_workflow(wf([{"step_id": "b", "type": "branch", "conditions": [
        {"if": "detection.severity == 'critical'", "then": "critical_response"}]}]),
        detection={"severity": "critical"})
    assert result.status is RunStatus.COMPLETED
    assert rec.paths() == ["b.inner"] and rec.calls[0][1] == {"who": "default"}


async def test_subworkflow_runs_with_params_and_shares_context(rec: Recorder) -> None:
    sub = wf([{"step_id": "x", "action": "set_ctx", "params": {"key": "from_sub", "value": "{{ context.arg }}"}}],
             workflow_id="sub")
    engine = make_engine(rec, workflows={"sub": sub})
    result = await engine.execute_workflow(wf([
        {"step_id": "call", "type": "workflow", "workflow_id": "sub", "params": {"arg": "{{ detection.v }}"},
         "output": "sub_result"},
        {"step_id": "after", "action": "act", "params": {"v": "{{ context.from_sub }}"}}]),
        detection={"v": 5})
    assert result.status is RunStatus.COMPLETED
    assert result.context["sub_result"] == {"x": 5}
    assert rec.calls[-1][1] == {"v": 5}
    assert "call.x" in result.step_results


async def test_subworkflow_depth_limit(rec: Recorder) -> None:
    loop_wf = wf([{"step_id": "again", "type": "workflow", "workflow_id": "a"}], workflow_id="b")
    first = wf([{"step_id": "go", "type": "workflow", "workflow_id": "b"}], workflow_id="a")
    engine = make_engine(rec, workflows={"a": first, "b": loop_wf}, max_depth=3)
    result = await engine.execute_workflow(first)
    assert result.status is RunStatus.FAILED
    assert "depth limit (3)" in (result.error or "")


async def test_unknown_subworkflow_fails_the_step(engine: WorkflowEngine) -> None:
    result = await engine.execute_workflow(wf([{"step_id": "s", "type": "workflow", "workflow_id": "nope"}]))
    assert result.status is RunStatus.FAILED and "unknown workflow 'nope'" in (result.error or "")


async def test_rollback_reaches_into_composites(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([
        {"step_id": "l", "type": "loop", "items": "[1, 2]",
         "step": {"step_id": "q", "action": "act", "params": {"n": "{{ context.item }}"},
                  "rollback_action": "undo"}},
        {"step_id": "p", "type": "parallel", "steps": [{"step_id": "x", "action": "act", "params": {"n": 3},
                                                        "rollback_action": "undo"}]},
        {"step_id": "fail", "action": "boom"}], rollback_on_failure=True))
    assert result.status is RunStatus.ROLLED_BACK
    assert [c[1]["n"] for c in rec.calls if c[0] == "undo"] == [3, 2, 1]
    assert result.step_results["l[1].q"].status is StepStatus.ROLLED_BACK


async def test_composite_timeout(rec: Recorder) -> None:
    engine = make_engine(rec)
    rec.gates["slow"] = asyncio.Event()
    result = await engine.execute_workflow(wf([{"step_id": "p", "type": "parallel", "timeout": 0.05,
                                                "steps": [{"step_id": "s", "action": "slow"}]}]))
    assert result.status is RunStatus.FAILED
    assert "timed out" in (result.step_results["p"].error or "")
    assert result.step_results["p.s"].status is StepStatus.CANCELLED


async def test_branch_without_a_matching_case_does_nothing(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([{"step_id": "b", "type": "branch", "conditions": [
        {"if": "1 == 2", "then": [{"step_id": "x", "action": "act"}]}]}]))
    assert result.status is RunStatus.COMPLETED and rec.calls == []
    assert result.step_results["b"].result == {"taken": None, "result": None}


async def test_loop_over_a_mapping_and_several_children(engine: WorkflowEngine, rec: Recorder) -> None:
    result = await engine.execute_workflow(wf([{"step_id": "l", "type": "loop", "items": "context.m", "steps": [
        {"step_id": "a", "action": "act", "params": {"k": "{{ context.item.key }}"}},
        {"step_id": "b", "action": "other", "params": {"v": "{{ context.item.value }}"}}]}]), {"m": {"x": 1}})
    assert result.step_results["l"].result == [{"a": {"action": "act", "k": "x"},
                                                "b": {"action": "other", "v": 1}}]


def test_workflows_are_compiled_at_load_time() -> None:
    workflow = wf([{"step_id": "a", "action": "act", "condition": "True", "params": {"x": "{{ 1 }}"}}])
    assert workflow.steps[0]._compiled is not None
