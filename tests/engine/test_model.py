"""The model: dict/YAML round-trips, aliases of the original engine, templates by name, action discovery."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sdd.engine import (
    ActionSpec,
    NotFound,
    PriorStep,
    RunStatus,
    Schedule,
    StepResult,
    StepStatus,
    Trigger,
    Workflow,
    WorkflowEngine,
    WorkflowResult,
    WorkflowStep,
    WorkflowValidationError,
)
from sdd.engine.specs.loader import parse_duration

from .conftest import Recorder, wf

FULL = {
    "workflow_id": "full", "name": "Full", "description": "every field",
    "trigger": {"type": ["malware", "pua"], "when": "detection.severity == 'high'", "priority": 5},
    "rollback_on_failure": True, "timeout": "5m", "context": {"notify": "root@localhost"},
    "on_interrupt": "rollback",
    "steps": [
        {"step_id": "q", "name": "Quarantine", "step_type": "action", "action": "act", "params": {"p": 1},
         "condition": "True", "on_failure": "rollback", "rollback_action": "undo", "timeout": 30,
         "retries": 3, "retry_delay": 0.5, "backoff": 3, "max_delay": 10, "jitter": 0, "output": "q_out",
         "total_timeout": 60},
        {"step_id": "l", "type": "loop", "items": "context.files", "as": "f", "concurrency": 4,
         "step": {"step_id": "x", "action": "act"}},
        {"step_id": "p", "type": "parallel", "fail_fast": False, "steps": [{"step_id": "p1", "action": "act"}]},
        {"step_id": "b", "type": "branch", "conditions": [{"if": "True", "then": "other_wf"},
                                                          {"else": [{"step_id": "e", "action": "act"}]}]},
        {"step_id": "w", "type": "workflow", "workflow_id": "other_wf", "params": {"a": 1}},
        {"step_id": "g", "type": "condition", "condition": "True", "on_false": "fail"},
        {"step_id": "n", "type": "notification", "params": {"title": "t"}},
    ],
}


def test_workflow_dict_round_trip() -> None:
    workflow = Workflow.from_dict(FULL)
    again = Workflow.from_dict(workflow.to_dict())
    assert again == workflow
    assert json.loads(json.dumps(workflow.to_dict())) == workflow.to_dict()
    q = workflow.steps[0]
    assert (q.max_retries, q.retries, q.timeout, q.step_type, q.type) == (3, 3, 30.0, "action", "action")
    assert workflow.timeout == 300.0
    assert workflow.trigger == Trigger(types=("malware", "pua"), when="detection.severity == 'high'", priority=5)
    assert workflow.steps[1].item_name == "f" and workflow.steps[1].steps[0].step_id == "x"
    assert workflow.steps[3].conditions[0].workflow == "other_wf"
    assert workflow.steps[6].action == "send_notification"


def test_schedule_trigger() -> None:
    every = Workflow.from_dict({"workflow_id": "u", "trigger": {"schedule": {"every": "6h"}},
                                "steps": [{"step_id": "a", "action": "act"}]})
    assert every.trigger is not None and every.trigger.schedule == Schedule(every=21600.0)
    at = Workflow.from_dict({"workflow_id": "u", "trigger": {"schedule": {"at": "03:00"}},
                             "steps": [{"step_id": "a", "action": "act"}]})
    assert at.trigger is not None and at.trigger.schedule == Schedule(at="03:00")
    assert Workflow.from_dict(at.to_dict()) == at


@pytest.mark.parametrize("text,seconds", [(5, 5.0), ("90", 90.0), ("30s", 30.0), ("5m", 300.0),
                                          ("1h30m", 5400.0), ("1d", 86400.0), ("250ms", 0.25)])
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration() -> None:
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_step_from_dict_and_to_dict() -> None:
    step = WorkflowStep.from_dict({"step_id": "a", "type": "webhook", "params": {"url": "u"}, "retries": 2})
    assert step.action == "call_webhook" and step.max_retries == 2
    assert WorkflowStep.from_dict(step.to_dict()) == step
    with pytest.raises(WorkflowValidationError):
        WorkflowStep.from_dict({"step_id": "a", "on_failure": "explode"})


def test_from_dict_rejects_invalid_snapshots() -> None:
    with pytest.raises(WorkflowValidationError) as err:
        Workflow.from_dict({"workflow_id": "x", "steps": [{"step_id": "a", "actoin": "x"}]})
    assert "did you mean 'action'" in str(err.value)


async def test_result_round_trip(engine: WorkflowEngine) -> None:
    result = await engine.execute_workflow(wf([{"step_id": "a", "action": "act", "params": {"x": 1}},
                                               {"step_id": "b", "action": "act", "condition": "1 == 2"}]))
    data = result.to_dict()
    assert json.loads(json.dumps(data)) == data
    again = WorkflowResult.from_dict(data)
    assert again.to_dict() == data
    assert again.status is RunStatus.COMPLETED and again.step_results["b"].status is StepStatus.SKIPPED
    assert StepResult.from_dict(result.step_results["a"].to_dict()) == result.step_results["a"]
    assert PriorStep.from_dict({"status": "completed", "result": 1}).result == 1


def test_from_yaml_and_load_template(tmp_path: Path) -> None:
    (tmp_path / "critical_threat_response.yaml").write_text(textwrap.dedent("""\
        workflow_id: critical_threat_response
        name: Critical threat response
        steps:
          - step_id: quarantine
            type: action
            action: quarantine_file
            params: {file_path: "{{ detection.file_path }}"}
        """))
    workflow = Workflow.from_yaml(tmp_path / "critical_threat_response.yaml")
    assert workflow.source == str(tmp_path / "critical_threat_response.yaml")
    engine = WorkflowEngine(template_dirs=[tmp_path])
    assert engine.load_template("critical_threat_response") == workflow
    with pytest.raises(NotFound):
        engine.load_template("nope")
    with pytest.raises(NotFound):
        engine.load_template("../etc/passwd")


def test_load_template_uses_sdd_templates_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "t.yml").write_text("workflow_id: t\nsteps: [{step_id: a, action: x}]\n")
    monkeypatch.setenv("SDD_TEMPLATES", str(tmp_path))
    assert WorkflowEngine().load_template("t").workflow_id == "t"


async def test_registry_register_and_spec(rec: Recorder) -> None:
    engine = WorkflowEngine()

    async def h(*, context: dict[str, Any]) -> int:
        return 1
    spec = engine.register_action("h", h, idempotent=True, destructive=True)
    assert spec == ActionSpec("h", h, idempotent=True, destructive=True)
    engine.register(ActionSpec("h2", h))
    assert engine.actions == {"h", "h2"}
    with pytest.raises(TypeError):
        engine.register("not a spec")  # type: ignore[arg-type]


def test_discover_actions_from_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "sdd_test_plugin.py"
    pkg.write_text(textwrap.dedent("""\
        from sdd.engine import ActionSpec

        async def shout(*, context, text=""):
            \"\"\"Shout a text.\"\"\"
            return text.upper()

        SPEC = ActionSpec("whisper", shout, idempotent=True)
        NOT_AN_ACTION = 42
        """))
    dist = tmp_path / "sdd_test_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sdd-test-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[sdd.actions]\nshout = sdd_test_plugin:shout\nwhisper = sdd_test_plugin:SPEC\n"
        "broken = sdd_test_plugin:NOT_AN_ACTION\nmissing = sdd_test_plugin_nope:x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    engine = WorkflowEngine()
    specs = engine.discover_actions()
    assert {s.name for s in specs} == {"shout", "whisper"}
    assert engine.registry.get("whisper").idempotent is True  # type: ignore[union-attr]
    assert engine.registry.get("shout").description == "Shout a text."  # type: ignore[union-attr]
    assert sorted(e.split(" ")[0] for e in engine.discovery_errors) == ["broken", "missing"]
    sys.modules.pop("sdd_test_plugin", None)
