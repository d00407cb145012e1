"""The runnable examples of docs/workflows.md (examples/workflows/): they load, validate, run, and the
docs show each one verbatim."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sdd.engine import RunStatus, WorkflowEngine, load_workflow_dirs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "workflows"
BUILTIN_NAMES = ["quarantine_file", "restore_file", "kill_process", "send_notification", "run_script",
                 "call_webhook", "run_scan", "generate_report"]
DETECTION = {"id": "d1", "type": "malware", "severity": "critical", "file_path": "/home/alice/evil.exe",
             "threat_name": "Win.Trojan.Agent", "process_id": 4242, "paths": ["/home/alice", "/tmp"]}


def _engine(calls: list[tuple[str, dict[str, Any]]]) -> WorkflowEngine:
    workflows, issues = load_workflow_dirs([EXAMPLES], BUILTIN_NAMES)
    assert issues == []
    engine = WorkflowEngine(workflows=workflows)
    for name in BUILTIN_NAMES:
        async def stub(*, context: dict[str, Any], _name: str = name, **params: Any) -> dict[str, Any]:
            calls.append((_name, params))
            return {"quarantine_id": "q1"} if _name == "quarantine_file" else {"ok": True}
        engine.register_action(name, stub, idempotent=name not in ("run_script", "call_webhook"))
    return engine


def test_every_step_type_has_an_example() -> None:
    workflows, issues = load_workflow_dirs([EXAMPLES], BUILTIN_NAMES)
    assert issues == []
    kinds = {s.step_type for wf in workflows.values() for _, s in wf.iter_steps()}
    assert kinds >= {"action", "notification", "script", "webhook", "condition", "loop", "parallel", "branch",
                     "workflow"}


@pytest.mark.parametrize("workflow_id,expected", [
    ("example_action", ["quarantine_file"]),
    ("example_notification", ["send_notification"]),
    ("example_script", ["run_script"]),
    ("example_webhook", ["call_webhook"]),
    ("example_condition", ["quarantine_file"]),
    ("example_loop", ["run_scan", "run_scan"]),
    ("example_parallel", ["send_notification", "call_webhook"]),
    ("example_branch", ["quarantine_file", "kill_process"]),
    ("example_contain", ["quarantine_file", "kill_process"]),
    ("example_workflow", ["quarantine_file", "kill_process", "generate_report"]),
])
async def test_example_runs(workflow_id: str, expected: list[str]) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    engine = _engine(calls)
    result = await engine.execute_workflow(engine.workflows[workflow_id], detection=DETECTION)
    assert result.status is RunStatus.COMPLETED, result.error
    assert sorted(c[0] for c in calls) == sorted(expected)


async def test_examples_render_typed_values() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    engine = _engine(calls)
    await engine.execute_workflow(engine.workflows["example_webhook"], detection=DETECTION)
    assert calls[0][1]["payload"]["detection"] == DETECTION
    calls.clear()
    await engine.execute_workflow(engine.workflows["example_workflow"], detection=DETECTION)
    assert dict(calls)["kill_process"] == {"process_id": 4242, "include_children": False}
    assert dict(calls)["generate_report"]["quarantine_id"] == "q1"


async def test_condition_example_stops_for_other_files() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    engine = _engine(calls)
    result = await engine.execute_workflow(engine.workflows["example_condition"],
                                           detection={**DETECTION, "file_path": "/home/alice/notes.txt"})
    assert result.status is RunStatus.COMPLETED and calls == []


async def test_branch_example_else_arm() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    engine = _engine(calls)
    await engine.execute_workflow(engine.workflows["example_branch"], detection={**DETECTION, "severity": "low"})
    assert [c[0] for c in calls] == ["send_notification"]


def test_docs_show_every_example_verbatim() -> None:
    docs = (ROOT / "docs" / "workflows.md").read_text()
    for path in sorted(EXAMPLES.glob("*.yaml")):
        assert path.read_text().strip() in docs, f"docs/workflows.md does not show {path.name}"
