"""Is this workflow valid? The published JSON Schema (`workflow.schema.json`) for structure, then semantic
checks the schema cannot express: what each step type needs, duplicate step ids, unknown actions, step params
against the action's declared parameters, unknown step references in expressions, expressions that do not
parse, sub-workflow self-references. `actions` is anything `params.catalogue` understands (an engine, a
registry, ActionSpecs, names) or None (then actions and their params are not checked).

Every problem is reported at once, each with the place it was found (`Marks` maps JSON paths to YAML
line/column, see `parsing.py`) and words a person understands ("did you mean ...").

This module runs the layers over one document; they live beside it: the schema layer in `schema_check.py`,
the semantic checks (and `find_cycles` across workflows) in `semantic_check.py`, positions and wording in
`issues.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ValidationIssue, WorkflowValidationError
from .issues import Marks, Path_, _Collector, _type_name
from .params import catalogue
from .schema_check import _schema_issues
from .semantic_check import _Semantics, _trigger, non_finite, positive_duration


def collect_issues(data: Any, source: str = "", marks: Marks | None = None,
                   actions: Any = None) -> tuple[list[ValidationIssue], list[tuple[str, Path_]]]:
    """Every problem of one workflow document, plus its sub-workflow references (id, path)."""
    c = _Collector(source, marks or Marks())
    actions = catalogue(actions)
    if not isinstance(data, Mapping):
        c.add((), f"a workflow file must hold a mapping (workflow_id, steps, ...), not {_type_name(data)}")
        return c.issues, []
    _schema_issues(data, c)
    non_finite(data, c)
    positive_duration(data.get("timeout"), ("timeout",), c)
    wid = data.get("workflow_id") if isinstance(data.get("workflow_id"), str) else None
    sem = _Semantics(c, actions, wid)
    sem.steps(data.get("steps"), ("steps",))
    _trigger(data.get("trigger"), c, [])
    sem.finish()
    c.issues.sort(key=lambda i: (i.line or 0, i.column or 0))
    return c.issues, sem.subworkflows


def validate_workflow_dict(data: Any, source: str | None = None, marks: Marks | None = None,
                           actions: Any = None) -> None:
    issues, _ = collect_issues(data, source or "", marks, actions)
    if issues:
        raise WorkflowValidationError(issues)


def validate_step_dict(data: Any, actions: Any = None) -> None:
    c = _Collector("", Marks())
    if not isinstance(data, Mapping):
        c.add((), f"a step must be a mapping, not {_type_name(data)}")
    else:
        _schema_issues(data, c, step=True)
        non_finite(data, c)
        sem = _Semantics(c, catalogue(actions), None)
        sem.step(data, ())
    if c.issues:
        raise WorkflowValidationError(c.issues)


__all__ = ["collect_issues", "validate_step_dict", "validate_workflow_dict"]
