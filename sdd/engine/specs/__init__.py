"""What a workflow *is*: the model (`model.py`, plain data), its vocabulary (`vocabulary.py`), loading from YAML
and dicts (`loader.py` over `parsing.py`), validation (`validation.py` over `schema_check.py`,
`semantic_check.py`, `issues.py`) and the published JSON Schema (`workflow.schema.json`). How a workflow
runs is the conductor's (the modules beside this package)."""

from .loader import (
    load_text,
    load_workflow,
    load_workflow_dirs,
    parse_duration,
    step_from_dict,
    validate_text,
    workflow_from_dict,
)
from .model import BranchCase, Schedule, Trigger, Workflow, WorkflowStep
from .schema_check import schema
from .vocabulary import LEAF_TYPES, STEP_TYPES, TYPE_ACTIONS, OnFailure, OnFalse, OnInterrupt, StepType

__all__ = [
    "LEAF_TYPES",
    "STEP_TYPES",
    "TYPE_ACTIONS",
    "BranchCase",
    "OnFailure",
    "OnFalse",
    "OnInterrupt",
    "Schedule",
    "StepType",
    "Trigger",
    "Workflow",
    "WorkflowStep",
    "load_text",
    "load_workflow",
    "load_workflow_dirs",
    "parse_duration",
    "schema",
    "step_from_dict",
    "validate_text",
    "workflow_from_dict",
]
