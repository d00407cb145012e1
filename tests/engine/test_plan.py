"""plan() and dry runs (one code path): conditions evaluated, params rendered, nothing run, and what would fail
reported as a finding, not a failure."""

from __future__ import annotations

from typing import Any

from sdd.engine import (
    RunFinished,
    RunStatus,
    StepFinished,
    StepStarted,
    StepStatus,
    WorkflowEngine,
    current_step,
)

from .conftest import Recorder, make_engine, wf

STEPS = [
    {"step_id": "q", "action": "act", "params": {"file_path": "{{ detection.file_path }}"}},
    {"step_id": "k", "action": "zap", "condition": "detection.get('process_id') is not None",
     "params": {"pid": "{{ detection.process_id }}"}},
    {"step_id": "r", "action": "other", "condition": "steps.q.status == 'completed'"},
    {"step_id": "l", "type": "loop", "items": "context.files", "step": {"step_id": "s", "action": "act",
                                                                         "params": {"f": "{{ context.item }}"}}},
    {"step_id": "b", "type": "branch", "conditions": [{"if": "detection.severity == 'high'",
                                                        "then": [{"step_id": "hi", "action": "act"}]},
                                                       {"else": [{"step_id": "lo", "action": "act"}]}]},
    {"step_id": "x", "action": "missing"},
]


def _engine(rec: Recorder) -> WorkflowEngine:
    engine = make_engine(rec)

    async def zap(*, context: dict[str, Any], pid: int) -> None:
        raise AssertionError("must not run")
    engine.register_action("zap", zap, destructive=True)
    return engine


def test_plan_reports_what_each_step_would_do(rec: Recorder) -> None:
    plan = _engine(rec).plan(wf(STEPS), {"files": ["/a", "/b"]},
                             detection={"file_path": "/tmp/x", "severity": "high"})
    by_id = {p["step_id"]: p for p in plan}
    assert by_id["q"]["would_run"] is True and by_id["q"]["params"] == {"file_path": "/tmp/x"}
    assert by_id["k"]["would_run"] is False and by_id["k"]["reason"] == "condition is false"
    assert by_id["r"]["would_run"] is True   # the plan assumes q completes
    assert [by_id[f"l[{i}].s"]["params"] for i in (0, 1)] == [{"f": "/a"}, {"f": "/b"}]
    assert by_id["b"]["reason"] == "takes case 0" and "b.hi" in by_id and "b.lo" not in by_id
    assert by_id["x"]["would_run"] is False and "unknown action" in by_id["x"]["reason"]
    assert rec.calls == []


def test_plan_marks_irreversible_steps(rec: Recorder) -> None:
    plan = _engine(rec).plan(wf(STEPS), {"files": []}, detection={"file_path": "/f", "process_id": 4,
                                                                  "severity": "low"})
    by_id = {p["step_id"]: p for p in plan}
    assert by_id["k"]["would_run"] is True and by_id["k"]["irreversible"] is True
    assert by_id["k"]["params"] == {"pid": 4}
    assert by_id["q"]["irreversible"] is False


def test_plan_reports_unknowable_conditions(rec: Recorder) -> None:
    plan = _engine(rec).plan(wf([{"step_id": "a", "action": "act", "condition": "steps.later.result > 1"},
                                  {"step_id": "later", "action": "act"}]))
    assert plan[0]["would_run"] is None and "cannot be decided" in plan[0]["reason"]


async def test_dry_run_runs_no_handler_and_reports_the_plan(rec: Recorder) -> None:
    engine = _engine(rec)
    seen = []

    async def look(*, context: dict[str, Any]) -> None:
        seen.append(current_step())
    engine.register_action("look", look)
    workflow = wf(STEPS[:3] + [{"step_id": "y", "action": "look", "rollback_action": "undo"}])
    detection = {"file_path": "/f", "process_id": 1}
    result = await engine.execute_workflow(workflow, {"files": []}, detection=detection, dry_run=True)
    assert rec.calls == [] and seen == []
    assert result.dry_run is True and result.status is RunStatus.COMPLETED and result.error is None
    assert result.step_results["k"].result == {"dry_run": True, "would_run": True, "reason": "would run",
                                               "action": "zap", "params": {"pid": 1}, "irreversible": True}
    assert result.step_results["r"].status is StepStatus.COMPLETED
    assert rec.events[0].dry_run is True
    # The dry run and the plan are one path: they agree step by step.
    plan = engine.plan(workflow, {"files": []}, detection=detection)
    assert [(p["step_id"], p["would_run"], p["reason"]) for p in plan] == [
        (sr.step_id, sr.result["would_run"], sr.reason) for sr in result.step_results.values()]


async def test_a_dry_run_without_the_detection_it_needs_says_would_fail_and_completes(rec: Recorder) -> None:
    engine = _engine(rec)
    workflow = wf([{"step_id": "q", "action": "act", "params": {"file_path": "{{ detection.file_path }}"},
                    "rollback_action": "undo"},
                   {"step_id": "n", "action": "other"}], rollback_on_failure=True)
    result = await engine.execute_workflow(workflow, dry_run=True)
    assert result.status is RunStatus.COMPLETED and result.error is None and rec.calls == []
    assert result.steps_failed == 0
    q, n = result.step_results["q"], result.step_results["n"]
    assert q.status is StepStatus.SKIPPED and q.reason.startswith("would fail: params: ")
    assert "file_path" in q.reason
    assert n.status is StepStatus.SKIPPED and n.reason == "not reached: step 'q' would fail"
    finished = [e for e in rec.events if isinstance(e, StepFinished)]
    assert [(e.step_id, e.status, e.error) for e in finished] == [("q", "skipped", None), ("n", "skipped", None)]
    assert isinstance(rec.events[-1], RunFinished) and rec.events[-1].status == "completed"


def test_a_failure_policy_that_carries_on_lets_the_plan_go_on(rec: Recorder) -> None:
    plan = _engine(rec).plan(wf([
        {"step_id": "q", "action": "missing", "on_failure": "continue"},
        {"step_id": "after", "action": "act", "condition": "steps.q.status == 'failed'"},
        {"step_id": "s", "action": "missing", "on_failure": "skip"},
        {"step_id": "last", "action": "act", "condition": "steps.s.status == 'skipped'"},
    ]))
    assert [(p["step_id"], p["would_run"]) for p in plan] == [("q", False), ("after", True), ("s", False),
                                                              ("last", True)]
    assert plan[0]["reason"] == "would fail: unknown action 'missing'"


def test_what_depends_on_an_earlier_result_is_undecided_not_a_failure(rec: Recorder) -> None:
    plan = _engine(rec).plan(wf([
        {"step_id": "a", "action": "act", "output": "found"},
        {"step_id": "b", "action": "act", "params": {"n": "{{ steps.a.result.count }}"}},
        {"step_id": "c", "action": "act", "params": {"sha": "{{ context.found.sha256 }}"}},
        {"step_id": "d", "action": "act", "params": {"whole": "{{ context.found }}"}},
        {"step_id": "e", "type": "loop", "items": "{{ steps.a.result }}", "step": {"step_id": "x", "action": "act"}},
        {"step_id": "f", "action": "act", "condition": "context.found is not None"},
    ]))
    by_id = {p["step_id"]: p for p in plan}
    assert [by_id[s]["would_run"] for s in "abcdef"] == [True, None, None, None, None, True]
    assert by_id["b"]["reason"].startswith("params cannot be decided before the run")
    why = "it uses an earlier step's result, not known before the run"
    assert by_id["b"]["reason"] == f"params cannot be decided before the run: {why}"
    assert by_id["d"]["reason"] == f"params cannot be decided before the run: {why}"
    assert by_id["e"]["reason"] == f"items cannot be decided before the run: {why}"


def test_a_stopping_check_ends_the_plan_and_the_rest_is_not_reached(rec: Recorder) -> None:
    plan = _engine(rec).plan(wf([
        {"step_id": "gate", "type": "condition", "condition": "detection.get('severity') == 'high'"},
        {"step_id": "act1", "action": "act"},
    ]), detection={"severity": "low"})
    assert [(p["step_id"], p["would_run"], p["reason"]) for p in plan] == [
        ("gate", True, "check is false: the run would stop here"),
        ("act1", False, "not reached: condition step 'gate' would stop the run")]


def test_a_failing_child_fails_its_composite_under_the_composites_policy(rec: Recorder) -> None:
    plan = _engine(rec).plan(wf([
        {"step_id": "l", "type": "loop", "items": [1, 2], "on_failure": "continue",
         "step": {"step_id": "s", "action": "act", "params": {"f": "{{ detection.path }}"}}},
        {"step_id": "p", "type": "parallel", "steps": [{"step_id": "ok", "action": "act"},
                                                      {"step_id": "bad", "action": "missing"}]},
        {"step_id": "never", "action": "act"},
    ]))
    by_id = {p["step_id"]: p for p in plan}
    assert by_id["l[0].s"]["would_run"] is False and by_id["l[0].s"]["reason"].startswith("would fail: params")
    assert "l[1].s" not in by_id   # the loop stops at its first failing item
    assert by_id["l"]["reason"] == "would fail: step 'l[0].s' would fail"
    assert by_id["p.ok"]["would_run"] is True and by_id["p.bad"]["would_run"] is False
    assert by_id["p"]["reason"] == "would fail: step 'p.bad' would fail"
    assert by_id["never"]["reason"] == "not reached: step 'p' would fail"


def test_the_plan_checks_rendered_params_against_the_actions_declaration(rec: Recorder) -> None:
    engine = _engine(rec)

    async def notify(*, context: dict[str, Any], **params: Any) -> None:
        raise AssertionError("must not run")
    engine.register_action("notify", notify, params={"channel": {"type": "string", "enum": ["log", "email"]},
                                                     "message": {"type": "string", "required": True}})
    plan = engine.plan(wf([{"step_id": "n", "action": "notify",
                            "params": {"channel": "{{ detection.channel }}", "message": "hi"}}]),
                       detection={"channel": "pager"})
    assert plan[0]["would_run"] is False
    assert plan[0]["reason"] == "would fail: parameter 'channel' of notify must be one of log, email; got 'pager'"


def test_plan_and_dry_run_resolve_sub_workflows_alike(rec: Recorder) -> None:
    child = wf([{"step_id": "inner", "action": "act", "params": {"v": "{{ context.v }}"}}], workflow_id="child",
               context={"v": 7})
    engine = make_engine(rec, workflows={"child": child})
    plan = engine.plan(wf([{"step_id": "sub", "type": "workflow", "workflow_id": "child"},
                           {"step_id": "gone", "type": "workflow", "workflow_id": "nope"}]))
    by_id = {p["step_id"]: p for p in plan}
    assert by_id["sub.inner"]["params"] == {"v": 7} and by_id["sub.inner"]["parent_id"] == "sub"
    assert by_id["gone"]["reason"] == "would fail: unknown workflow 'nope'"


async def test_a_dry_run_emits_step_events_with_the_plan_and_no_intent(rec: Recorder) -> None:
    engine = _engine(rec)
    await engine.execute_workflow(wf([{"step_id": "k", "action": "zap", "params": {"pid": 3}}]), dry_run=True)
    started = [e for e in rec.events if isinstance(e, StepStarted)]
    assert [(e.step_id, e.attempt, dict(e.params)) for e in started] == [("k", 1, {"pid": 3})]
