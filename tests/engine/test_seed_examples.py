"""The original engine's usage examples (../shared/seed-report.md, "Usage Examples") work as written, with
the package path adapted (`app.core.automation` → `sdd.engine`). The code is quoted here; when the report
is beside the checkout, the quotes are checked against it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# The checkout's sibling folder `shared/` (as for the main checkout and CI's clone).
REPORT = Path(__file__).resolve().parents[3] / "shared" / "seed-report.md"

PROGRAMMATIC = '''\
from sdd.engine import Workflow, WorkflowStep, StepType

workflow = Workflow(
    workflow_id="my_workflow",
    name="My Security Workflow",
    description="Custom security response",
    steps=[
        WorkflowStep(
            step_id="scan",
            name="Scan Directory",
            step_type=StepType.ACTION.value,
            action="run_scan",
            params={"path": "/home/user", "scan_type": "full"},
            on_failure="retry",
            max_retries=3,
        ),
        WorkflowStep(
            step_id="notify",
            name="Notify Admin",
            step_type=StepType.NOTIFICATION.value,
            action="send_notification",
            params={"recipient": "admin@example.com"},
            condition='context.get("threats_found", 0) > 0',
        ),
    ],
)
'''

CUSTOM_ACTION = '''\
async def custom_scan(scan_path: str, **kwargs):
    """Custom scanning logic."""
    # Implementation
    return {"files_scanned": 500, "threats_found": 2}

engine.register_action("custom_scan", custom_scan)
'''


def _report_block(heading: str) -> str:
    text = REPORT.read_text(encoding="utf-8")
    block = text.split(f"### {heading}", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    return block.replace("app.core.automation", "sdd.engine")


@pytest.mark.skipif(not REPORT.is_file(), reason="the seed report is not beside this checkout")
def test_the_quoted_examples_are_the_reports() -> None:
    programmatic = _report_block("Create Workflow Programmatically")
    assert programmatic.split("\nresult = ")[0].strip() == PROGRAMMATIC.strip()
    assert _report_block("Register Custom Action").strip() == CUSTOM_ACTION.strip()


def _run(tmp_path: Path, program: str) -> Any:
    """Runs `program` (the quoted example between a prelude and an epilogue written here) as its own Python
    process, the way a user would, and returns the JSON it prints last."""
    path = tmp_path / "example.py"
    path.write_text(program, encoding="utf-8")
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


PRELUDE = """\
import asyncio, json
from sdd.engine import WorkflowEngine

engine = WorkflowEngine()
calls = []

async def run_scan(*, context, **params):
    calls.append(["run_scan", params])
    context["threats_found"] = 1
    return {"threats_found": 1}

async def send_notification(*, context, **params):
    calls.append(["send_notification", params])
    return {"sent": True}

engine.register_action("run_scan", run_scan)
engine.register_action("send_notification", send_notification)
"""


def test_create_workflow_programmatically_runs(tmp_path: Path) -> None:
    epilogue = """
async def main():
    result = await engine.execute_workflow(workflow)
    print(json.dumps({"status": result.status, "is_completed": result.status == "completed", "calls": calls,
                      "max_retries": workflow.steps[0].max_retries, "type": workflow.steps[1].step_type}))
asyncio.run(main())
"""
    out = _run(tmp_path, PRELUDE + PROGRAMMATIC + epilogue)
    assert out == {"status": "completed", "is_completed": True, "max_retries": 3, "type": "notification",
                   "calls": [["run_scan", {"path": "/home/user", "scan_type": "full"}],
                             ["send_notification", {"recipient": "admin@example.com"}]]}


def test_register_custom_action_runs(tmp_path: Path) -> None:
    epilogue = """
from sdd.engine import Workflow
wf = Workflow.from_dict({"workflow_id": "w", "steps": [
    {"step_id": "s", "action": "custom_scan", "params": {"scan_path": "/srv"}, "output": "scan"}]})

async def main():
    result = await engine.execute_workflow(wf)
    print(json.dumps({"status": result.status, "scan": result.context["scan"]}))
asyncio.run(main())
"""
    out = _run(tmp_path, PRELUDE + CUSTOM_ACTION + epilogue)
    assert out == {"status": "completed", "scan": {"files_scanned": 500, "threats_found": 2}}


def test_the_step_type_enum_names_every_step_type() -> None:
    from sdd.engine import StepType, WorkflowStep
    assert [t.value for t in StepType] == ["action", "notification", "script", "webhook", "condition", "loop",
                                           "parallel", "branch", "workflow"]
    assert WorkflowStep(step_id="n", step_type=StepType.NOTIFICATION).action == "send_notification"
