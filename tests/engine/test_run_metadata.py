"""Run metadata travels with the run: `start(labels=...)` reaches every event, `current_step()`, the handle
and the result, read-only; finished runs leave `active_runs` by themselves; sub-workflows and branch arms
are found in the engine's template directories too."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sdd.engine import (
    EngineError,
    RunFinished,
    RunStarted,
    RunStatus,
    StepFinished,
    StepInfo,
    StepStarted,
    WorkflowEngine,
    current_step,
)

from .conftest import Recorder, make_engine, wf

LABELS = {"detection_id": "d-1", "external_id": "clam-42", "trigger": "detection", "uid": "0"}


async def test_labels_reach_every_event_the_handler_the_handle_and_the_result(rec: Recorder) -> None:
    engine = make_engine(rec)
    seen: list[StepInfo | None] = []

    async def look(*, context: dict[str, Any]) -> None:
        seen.append(current_step())
    engine.register_action("look", look)
    workflow = wf([{"step_id": "a", "action": "look"},
                   {"step_id": "skipped", "action": "act", "condition": "False"},
                   {"step_id": "l", "type": "loop", "items": [1], "step": {"step_id": "c", "action": "look"}},
                   {"step_id": "b", "action": "boom"}])
    given = dict(LABELS)
    handle = engine.start(workflow, labels=given)
    given["trigger"] = "changed after start"   # the run keeps what it was given
    result = await handle.wait()
    assert result.status is RunStatus.FAILED
    kinds = {type(e) for e in rec.events}
    assert kinds == {RunStarted, StepStarted, StepFinished, RunFinished}
    assert all(dict(e.labels) == LABELS for e in rec.events)
    assert [dict(i.labels) for i in seen if i is not None] == [LABELS, LABELS]
    assert dict(handle.labels) == LABELS and dict(result.labels) == LABELS
    with pytest.raises(TypeError):
        handle.labels["trigger"] = "x"  # type: ignore[index]


async def test_labels_reach_rollback_and_dry_run_events(rec: Recorder) -> None:
    engine = make_engine(rec)
    workflow = wf([{"step_id": "a", "action": "act", "rollback_action": "undo"}, {"step_id": "b", "action": "boom"}],
                  rollback_on_failure=True)
    await engine.execute_workflow(workflow, labels=LABELS)
    rollback = [e for e in rec.events if getattr(e, "phase", None) == "rollback"]
    assert rollback and all(dict(e.labels) == LABELS for e in rollback)
    rec.events.clear()
    await engine.execute_workflow(workflow, labels=LABELS, dry_run=True)
    assert rec.events and all(dict(e.labels) == LABELS for e in rec.events)


async def test_a_run_without_labels_has_empty_ones(engine: WorkflowEngine, rec: Recorder) -> None:
    await engine.execute_workflow(wf([{"step_id": "a", "action": "act"}]))
    assert all(dict(e.labels) == {} for e in rec.events)


@pytest.mark.parametrize("labels", [{"n": 1}, {1: "x"}, ["a"]])
async def test_labels_must_map_strings_to_strings(engine: WorkflowEngine, labels: Any) -> None:
    with pytest.raises(EngineError, match="labels must"):
        engine.start(wf([{"step_id": "a", "action": "act"}]), labels=labels)
    assert engine.active_runs == {}


async def test_finished_runs_leave_active_runs_by_themselves(engine: WorkflowEngine, rec: Recorder) -> None:
    rec.gates["slow"] = asyncio.Event()
    handle = engine.start(wf([{"step_id": "a", "action": "slow"}]))
    other = engine.start(wf([{"step_id": "a", "action": "act"}]))
    await other.wait()
    await asyncio.sleep(0)   # the done-callback runs on the loop's next turn
    assert set(engine.active_runs) == {handle.run_id}
    rec.gates["slow"].set()
    await handle.wait()
    await asyncio.sleep(0)
    assert engine.active_runs == {}
    cancelled = engine.start(wf([{"step_id": "a", "action": "act"}]))
    cancelled.task.cancel()   # even a task cancelled before it began leaves
    with pytest.raises(asyncio.CancelledError):
        await cancelled.task
    await asyncio.sleep(0)
    assert engine.active_runs == {}


def _write(directory: Path, name: str, text: str) -> None:
    (directory / f"{name}.yaml").write_text(text, encoding="utf-8")


async def test_sub_workflows_and_branch_arms_resolve_from_the_template_dirs(tmp_path: Path, rec: Recorder) -> None:
    _write(tmp_path, "parent", "workflow_id: parent\nsteps:\n"
           "  - {step_id: sub, type: workflow, workflow_id: child}\n"
           "  - step_id: pick\n    type: branch\n    conditions: [{if: 'True', then: arm}]\n")
    _write(tmp_path, "child", "workflow_id: child\nsteps: [{step_id: c, action: act}]\n")
    _write(tmp_path, "arm", "workflow_id: arm\nsteps: [{step_id: x, action: other}]\n")
    engine = make_engine(rec, template_dirs=[tmp_path])
    parent = engine.load_template("parent")
    result = await engine.execute_workflow(parent)
    assert result.status is RunStatus.COMPLETED, result.error
    assert rec.paths() == ["sub.c", "pick.x"]
    plan = engine.plan(parent)
    assert [p["step_id"] for p in plan if p["would_run"]] == ["sub", "sub.c", "pick", "pick.x"]


async def test_workflows_given_to_the_engine_win_over_templates(tmp_path: Path, rec: Recorder) -> None:
    _write(tmp_path, "child", "workflow_id: child\nsteps: [{step_id: c, action: act}]\n")
    mine = wf([{"step_id": "mine", "action": "other"}], workflow_id="child")
    engine = make_engine(rec, template_dirs=[tmp_path], workflows={"child": mine})
    await engine.execute_workflow(wf([{"step_id": "s", "type": "workflow", "workflow_id": "child"}]))
    assert rec.paths() == ["s.mine"]


async def test_an_unknown_or_broken_template_child_fails_the_step_with_its_name(tmp_path: Path,
                                                                               rec: Recorder) -> None:
    _write(tmp_path, "broken", "workflow_id: broken\nsteps: [{step_id: c}]\n")
    engine = make_engine(rec, template_dirs=[tmp_path])
    for target in ("broken", "absent"):
        result = await engine.execute_workflow(wf([{"step_id": "s", "type": "workflow", "workflow_id": target}]))
        assert result.status is RunStatus.FAILED
        assert result.error == f"step 's' failed: unknown workflow {target!r}"
