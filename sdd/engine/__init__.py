"""sdd.engine: YAML response workflows — what a workflow is (`specs/`: model, loading, validation, schema),
the sandboxed expression language (`expressions/`), and the conductor beside them (planning, running,
events).

Imports nothing else from sdd. See docs/internals.md ("Engine") and docs/workflows.md.
"""

from .engine import RunHandle, WorkflowEngine, new_run_id
from .env import RunEnv
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
from .events import EngineEvent, Listener, RunFinished, RunStarted, StepFinished, StepStarted, StepWaiting
from .expressions import check_syntax, evaluate, evaluate_condition, render
from .registry import ActionSpec, StepInfo, current_step, report_waiting
from .results import NO_LABELS, PriorStep, StepResult, WorkflowResult
from .specs import (
    BranchCase,
    OnFailure,
    OnFalse,
    OnInterrupt,
    Schedule,
    StepType,
    Trigger,
    Workflow,
    WorkflowStep,
    load_text,
    load_workflow,
    load_workflow_dirs,
    validate_text,
)
from .specs.params import ParamSpec
from .specs.schema_check import workflow_schema
from .specs.trust import path_problem
from .statuses import Phase, RunStatus, StepStatus

__all__ = [
    "NO_LABELS",
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
    "OnFailure",
    "OnFalse",
    "OnInterrupt",
    "ParamSpec",
    "Phase",
    "PriorStep",
    "RunEnv",
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
    "StepType",
    "StepWaiting",
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
    "path_problem",
    "render",
    "report_waiting",
    "validate_text",
    "workflow_schema",
]
