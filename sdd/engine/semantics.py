"""What a step means, decided in one place for the runner, composite steps and the plan (which is also the dry
run): whether its condition holds, its rendered params, a loop's items and each item's context, which branch
case is taken, which sub-workflow a step names and the context it runs with, and what a failure does to the
rest of the run. Pure functions: no events, no awaiting, no recording.

Problems of the step itself raise `StepProblem`; expressions that fail raise `ExpressionError`. The callers
word them (a run fails the step, the plan says "would fail" or "cannot be decided").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .errors import ExpressionError
from .expressions import Expression, evaluate, evaluate_condition
from .flow import StepProblem
from .specs.compilation import Compiled
from .specs.model import BranchCase, Workflow, WorkflowStep
from .specs.vocabulary import CARRY_ON, OnFailure, StepType
from .statuses import StepStatus

MAX_LOOP_ITEMS = 10_000


def condition_holds(cond: Expression | None, names: Mapping[str, Any]) -> bool:
    """A step's `condition` (true when it has none); raises ExpressionError."""
    return cond is None or evaluate_condition(cond, names)


def render_params(step: WorkflowStep, c: Compiled, names: Mapping[str, Any]) -> Mapping[str, Any]:
    """The step's params with their templates rendered (the step's own dict when it has none)."""
    return step.params if c.params is None else c.params.fn(names)


def loop_items(c: Compiled, names: Mapping[str, Any]) -> list[Any] | tuple[Any, ...]:
    """A loop's items: an expression, a list with templates, or a plain list; a mapping gives
    `{key, value}` items. Raises ExpressionError, or StepProblem for a non-list or too many items."""
    return as_items(loop_value(c, names))


def loop_value(c: Compiled, names: Mapping[str, Any]) -> Any:
    """What a loop's `items` evaluates to, before it is checked to be a list (see `as_items`)."""
    if c.items is not None:
        return evaluate(c.items, names)
    if c.items_value is not None and hasattr(c.items_value, "fn"):
        return c.items_value.fn(names)
    return c.items_value


def as_items(value: Any) -> list[Any] | tuple[Any, ...]:
    if isinstance(value, Mapping):
        value = [{"key": k, "value": v} for k, v in value.items()]
    if not isinstance(value, (list, tuple)):
        raise StepProblem(f"items must give a list, not {type(value).__name__}")
    if len(value) > MAX_LOOP_ITEMS:
        raise StepProblem(f"{len(value)} items is more than the limit of {MAX_LOOP_ITEMS}")
    return value


def item_path(path: str, index: int) -> str:
    """The prefix of a loop item's children: `loop[3].`."""
    return f"{path}[{index}]."


def item_context(context: Mapping[str, Any], step: WorkflowStep, index: int, item: Any) -> dict[str, Any]:
    """A loop item's own context: the enclosing one plus the item (under `as`) and `loop_index`."""
    ctx = dict(context)
    ctx[step.item_name] = item
    ctx["loop_index"] = index
    return ctx


def choose_case(c: Compiled, names: Mapping[str, Any]) -> tuple[int | str, BranchCase] | None:
    """The branch case taken, as (its label: index or "else", the case), or None when none matches.
    Raises ExpressionError naming the case whose `if` failed."""
    for index, (cond, case) in enumerate(c.cases):
        if cond is None:
            return "else", case
        try:
            taken = evaluate_condition(cond, names)
        except ExpressionError as exc:
            raise ExpressionError(f"branch case {index}: {exc}", exc.expression) from None
        if taken:
            return index, case
    return None


def case_label(label: int | str) -> str:
    return "else" if label == "else" else f"case {label}"


def subworkflow(find: Callable[[str], Workflow | None], workflow_id: str | None, depth: int,
                max_depth: int) -> Workflow:
    """The sub-workflow a `workflow` step or a branch arm names, to be run at `depth`; StepProblem when it is
    not named, not known or nested too deep."""
    if not workflow_id:
        raise StepProblem("workflow step without workflow_id")
    sub = find(workflow_id)
    if sub is None:
        raise StepProblem(f"unknown workflow {workflow_id!r}")
    if depth > max_depth:
        raise StepProblem(f"sub-workflow depth limit ({max_depth}) reached at {workflow_id!r}")
    return sub


def enter_subworkflow(context: dict[str, Any], sub: Workflow, step: WorkflowStep, c: Compiled,
                      names: Mapping[str, Any]) -> None:
    """The context a sub-workflow runs with (the caller's own, shared): the sub-workflow's context for keys
    not set yet, then a `workflow` step's rendered params. Raises ExpressionError from the params."""
    for key, value in sub.context.items():
        context.setdefault(key, value)
    if step.step_type == StepType.WORKFLOW and step.params:
        context.update(render_params(step, c, names))


def carries_on(step: WorkflowStep) -> bool:
    """Whether the run goes on after this step failed (`on_failure: continue` or `skip`)."""
    return step.on_failure in CARRY_ON


def failed_status(step: WorkflowStep) -> StepStatus:
    """What a failed step is recorded as: skipped under `on_failure: skip`, else failed."""
    return StepStatus.SKIPPED if step.on_failure == OnFailure.SKIP else StepStatus.FAILED


def rolls_back(step: WorkflowStep) -> bool:
    """Whether this step's failure asks for the run to be rolled back, whatever the workflow says."""
    return step.on_failure == OnFailure.ROLLBACK


__all__ = [
    "MAX_LOOP_ITEMS",
    "as_items",
    "carries_on",
    "case_label",
    "choose_case",
    "condition_holds",
    "enter_subworkflow",
    "failed_status",
    "item_context",
    "item_path",
    "loop_items",
    "loop_value",
    "render_params",
    "rolls_back",
    "subworkflow",
]
