"""sdd.engine: YAML response workflows — model, loading and validation, safe expressions, execution, events.

Imports nothing else from sdd. See docs/internals.md ("Engine") and docs/workflows.md.
"""

from .engine import RunHandle, WorkflowEngine
from .errors import (ActionError, Conflict, EngineError, ExpressionError, Forbidden, InvalidParams,
                     NonRetryableError, NotFound, StepTimeout, ValidationIssue, WorkflowValidationError)
from .events import EngineEvent, Listener, RunFinished, RunStarted, StepFinished, StepStarted
from .loader import load_text, load_workflow, load_workflow_dirs, validate_text
from .expressions import check_syntax, evaluate, evaluate_condition, render
from .model import BranchCase, Schedule, Trigger, Workflow, WorkflowStep
from .registry import ActionSpec, StepInfo, current_step
from .results import PriorStep, StepResult, WorkflowResult
from .statuses import RunStatus, StepStatus

__all__ = [
    "WorkflowEngine", "RunHandle", "Workflow", "WorkflowStep", "BranchCase", "Trigger", "Schedule",
    "WorkflowResult", "StepResult", "PriorStep", "RunStatus", "StepStatus", "ActionSpec", "StepInfo",
    "current_step", "EngineError", "WorkflowValidationError", "ValidationIssue", "ExpressionError",
    "ActionError", "NonRetryableError", "InvalidParams", "Forbidden", "NotFound", "Conflict", "StepTimeout",
    "RunStarted", "StepStarted", "StepFinished", "RunFinished", "EngineEvent", "Listener", "load_workflow",
    "load_workflow_dirs", "validate_text", "load_text", "evaluate", "evaluate_condition", "render", "check_syntax",
]
