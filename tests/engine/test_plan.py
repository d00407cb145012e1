"""plan() and dry runs: conditions evaluated, params rendered, nothing run."""

from __future__ import annotations

from typing import Any

from sdd.engine import RunStatus, StepStatus, WorkflowEngine, current_step

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
    plan = _engine(rec).plan(wf(STEPS), {"files": []}, detection={"process_id": 4, "severity": "low"})
    by_id = {p["step_id"]: p for p in plan}
    assert by_id["k"]["would_run"] is True and by_id["k"]["irreversible"] is True
    assert by_id["k"]["params"] == {"pid": 4}
    assert by_id["q"]["irreversible"] is False


def test_plan_reports_unknowable_conditions(rec: Recorder) -> None:
    plan = _engine(rec).plan(wf([{"step_id": "a", "action": "act", "condition": "steps.later.result > 1"},
                                  {"step_id": "later", "action": "act"}]))
    assert plan[0]["would_run"] is None and "cannot be decided" in plan[0]["reason"]


async def test_dry_run_runs_no_handler(rec: Recorder) -> None:
    engine = _engine(rec)
    seen = []

    async def look(*, context: dict[str, Any]) -> None:
        seen.append(current_step())
    engine.register_action("look", look)
    result = await engine.execute_workflow(wf(STEPS[:3] + [{"step_id": "y", "action": "look",
                                                             "rollback_action": "undo"}]),
                                           {"files": []}, detection={"file_path": "/f", "process_id": 1},
                                           dry_run=True)
    assert rec.calls == [] and seen == []
    assert result.dry_run is True and result.status is RunStatus.COMPLETED
    assert result.step_results["k"].result == {"dry_run": True, "action": "zap", "params": {"pid": 1},
                                               "irreversible": True}
    assert result.step_results["r"].status is StepStatus.COMPLETED
    assert rec.events[0].dry_run is True


async def test_dry_run_of_a_failing_plan_does_not_roll_back(rec: Recorder) -> None:
    engine = _engine(rec)
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "act", "rollback_action": "undo"},
                                               {"step_id": "x", "action": "missing"}], rollback_on_failure=True),
                                           dry_run=True)
    assert result.status is RunStatus.FAILED and rec.calls == []
