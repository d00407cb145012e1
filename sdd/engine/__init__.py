"""sdd.engine: YAML response workflows — model, loading and validation, safe expressions, execution, events.

Imports nothing else from sdd. See docs/internals.md ("Engine") and docs/workflows.md.
"""

from .engine import RunHandle, WorkflowEngine, new_run_id
from .errors import (
    ActionError,
    Conflict,
    EngineError,
    ExpressionError,
    Forbidden,
    InvalidParams,
    NonRetryableError,
    NotFound,
    StepTimeout,
    ValidationIssue,
    WorkflowValidationError,
)
from .events import EngineEvent, Listener, RunFinished, RunStarted, StepFinished, StepStarted
from .expressions import check_syntax, evaluate, evaluate_condition, render
from .loader import load_text, load_workflow, load_workflow_dirs, validate_text
from .model import BranchCase, Schedule, Trigger, Workflow, WorkflowStep
from .registry import ActionSpec, StepInfo, current_step
from .results import PriorStep, StepResult, WorkflowResult
from .statuses import RunStatus, StepStatus

__all__ = [
    "ActionError",
    "ActionSpec",
    "BranchCase",
    "Conflict",
    "EngineError",
    "EngineEvent",
    "ExpressionError",
    "Forbidden",
    "InvalidParams",
    "Listener",
    "NonRetryableError",
    "NotFound",
    "PriorStep",
    "RunFinished",
    "RunHandle",
    "RunStarted",
    "RunStatus",
    "Schedule",
    "StepFinished",
    "StepInfo",
    "StepResult",
    "StepStarted",
    "StepStatus",
    "StepTimeout",
    "Trigger",
    "ValidationIssue",
    "Workflow",
    "WorkflowEngine",
    "WorkflowResult",
    "WorkflowStep",
    "WorkflowValidationError",
    "check_syntax",
    "current_step",
    "evaluate",
    "evaluate_condition",
    "load_text",
    "load_workflow",
    "load_workflow_dirs",
    "new_run_id",
    "render",
    "validate_text",
]
