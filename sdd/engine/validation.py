"""Workflow validation (interim: required keys only; the JSON Schema + semantic checks replace this)."""

from __future__ import annotations

from typing import Any, Mapping

from .errors import ValidationIssue, WorkflowValidationError


def validate_step_dict(data: Mapping[str, Any]) -> None:
    if not isinstance(data, Mapping) or "step_id" not in data:
        raise WorkflowValidationError([ValidationIssue("", None, None, "", "a step needs a step_id")])


def validate_workflow_dict(data: Mapping[str, Any], source: str | None = None) -> None:
    if not isinstance(data, Mapping) or "workflow_id" not in data:
        raise WorkflowValidationError([ValidationIssue(source or "", None, None, "", "missing workflow_id")])
