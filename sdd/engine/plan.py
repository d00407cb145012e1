"""The plan: what each step would do for a given context and detection, running nothing. It is also the dry
run (`engine.start(..., dry_run=True)` reports the plan as a run's results and events), so the two always
agree, and it decides with the runner's own rules (`semantics.py`).

Conditions are evaluated and parameters rendered exactly as a run would, assuming earlier steps complete
(`steps.<id>.status` is "completed"); their results and `output`s are not known until they run, so what
depends on them is reported as undecided (`would_run: None`) with the reason. What fails for the given
context and detection alone — a parameter that cannot be rendered without a detection field, an unknown
action, a parameter the action does not accept — is reported as "would fail: ...", and the steps such a
failure would keep from running as "not reached: ...". Each entry: `step_id` (the step's path),
`parent_id`, `step_type`, `action`, `would_run` (True, False, or None: undecided), `reason`, `params`
(rendered), `irreversible`, `idempotent`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .env import RunEnv
from .errors import ExpressionError
from .expressions import Expression, compile_expression, evaluate_condition, template_expressions
from .flow import StepProblem
from .results import StepResult
from .scope import Scope, StepsView
from .semantics import (
    as_items,
    carries_on,
    case_label,
    choose_case,
    condition_holds,
    enter_subworkflow,
    failed_status,
    item_context,
    item_path,
    loop_value,
    render_params,
    subworkflow,
)
from .specs.compilation import Compiled, compiled
from .specs.model import Workflow, WorkflowStep
from .specs.params import param_problems
from .specs.vocabulary import LEAF_TYPES, OnFalse, StepType
from .statuses import StepStatus

_GO_ON, _HALT, _ABORT = "go on", "halt", "abort"
_Outcome = tuple[str, str]   # (what the walk does next, why it stops)
_MAX_SCAN = 64
_CONDITION_FALSE = "condition is false"


class _Unknown(Mapping[str, Any]):
    """An earlier step's result or output: not known before the run. Reading into it, asking its length or
    truth, and rendering it into text all fail with an ExpressionError, so whatever depends on it is
    reported as undecided; only `is None` / `is not None` can be answered (it is not None: the plan assumes
    the step completes)."""

    __slots__ = ()
    _WHY = "it uses an earlier step's result, not known before the run"

    def __getitem__(self, key: str) -> Any:
        raise ExpressionError(self._WHY)

    def __iter__(self) -> Iterator[str]:
        raise ExpressionError(self._WHY)

    def __len__(self) -> int:
        raise ExpressionError(self._WHY)

    def __repr__(self) -> str:
        return "<not known before the run>"

    def __str__(self) -> str:
        raise ExpressionError(self._WHY)


UNKNOWN = _Unknown()


def _holds_unknown(value: Any, depth: int = 0) -> bool:
    if value is UNKNOWN:
        return True
    if depth > _MAX_SCAN:
        return False
    if isinstance(value, Mapping):
        return any(_holds_unknown(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_unknown(v, depth + 1) for v in value)
    return False


class Planner:
    """One plan of one workflow: `plan()` walks it once and fills `out` with one entry per step reached."""

    def __init__(self, env: RunEnv, detection: Mapping[str, Any]):
        self.env = env
        self.detection = detection
        self.out: list[dict[str, Any]] = []
        self.assumed: dict[str, StepResult] = {}      # what expressions see of the steps planned so far
        self.local_ids: dict[str, str] = {}
        self.pending_outputs: set[str] = set()       # context keys set by steps that would run

    def plan(self, workflow: Workflow, context: dict[str, Any]) -> list[dict[str, Any]]:
        names = {"context": context, "detection": self.detection,
                 "steps": StepsView(self.assumed, self.local_ids)}
        self.walk(workflow.steps, Scope(names, context, "", 0, workflow.workflow_id), None)
        return self.out

    # -- entries and what later expressions see of them
    def entry(self, step: WorkflowStep, path: str, parent: str | None, would_run: bool | None, reason: str,
              params: Any = None) -> dict[str, Any]:
        spec = self.env.registry.get(step.action) if step.action else None
        item = {"step_id": path, "parent_id": parent, "step_type": step.step_type, "action": step.action,
                "would_run": would_run, "reason": reason, "params": params,
                "irreversible": bool(spec is not None and spec.destructive and not step.rollback_action),
                "idempotent": bool(spec is not None and spec.idempotent)}
        self.out.append(item)
        if would_run is True:
            self.assume(step, path, StepStatus.COMPLETED, UNKNOWN, None)
        elif reason == _CONDITION_FALSE:
            self.assume(step, path, StepStatus.SKIPPED, None, None)
        return item

    def assume(self, step: WorkflowStep, path: str, status: StepStatus, result: Any, error: str | None) -> None:
        self.assumed[path] = StepResult(path, status, result, error, 1, step_type=step.step_type,
                                        action=step.action)
        if path != step.step_id:
            self.local_ids[step.step_id] = path

    def would_fail(self, step: WorkflowStep, path: str, parent: str | None, error: str, params: Any = None,
                   item: dict[str, Any] | None = None) -> _Outcome:
        """The step would fail: say so, and apply its on_failure to the rest of the plan."""
        if item is None:
            self.entry(step, path, parent, False, f"would fail: {error}", params)
        else:
            item["reason"] = f"would fail: {error}"
        self.assume(step, path, failed_status(step), None, error)
        if carries_on(step):
            return _GO_ON, ""
        return _ABORT, f"step {path!r} would fail"

    def unsure(self, step: WorkflowStep, path: str, parent: str | None, what: str, exc: ExpressionError,
               exprs: Iterable[Expression | None], params: Any = None) -> _Outcome:
        """An expression failed: undecided when it reads what earlier steps give, else the step would fail."""
        if self.depends_on_run(exprs):
            self.entry(step, path, parent, None, f"{what} cannot be decided before the run: {exc}", params)
            return _GO_ON, ""
        return self.would_fail(step, path, parent, f"{what}: {exc}", params)

    def depends_on_run(self, exprs: Iterable[Expression | None]) -> bool:
        pending = self.pending_outputs
        for expr in exprs:
            if expr is None:
                continue
            for node in ast.walk(expr.node):
                if isinstance(node, ast.Name) and node.id == "steps":
                    return True
                if not pending:
                    continue
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                        and node.value.id == "context" and node.attr in pending):
                    return True
                if isinstance(node, ast.Constant) and node.value in pending:
                    return True   # context["x"], context.get("x")
        return False

    # -- the walk
    def walk(self, steps: list[WorkflowStep], scope: Scope, parent: str | None) -> _Outcome:
        for i, step in enumerate(steps):
            outcome, why = self.step(step, scope.prefix + step.step_id, parent, scope)
            if outcome != _GO_ON:
                for rest in steps[i + 1:]:
                    self.entry(rest, scope.prefix + rest.step_id, parent, False, f"not reached: {why}")
                return outcome, why
        return _GO_ON, ""

    def step(self, step: WorkflowStep, path: str, parent: str | None, scope: Scope) -> _Outcome:
        try:
            c = compiled(step)
        except ExpressionError as exc:
            return self.would_fail(step, path, parent, f"invalid expression: {exc}")
        kind = step.step_type
        if kind != StepType.CONDITION:
            try:
                if not condition_holds(c.cond, scope.names):
                    self.entry(step, path, parent, False, _CONDITION_FALSE)
                    return _GO_ON, ""
            except ExpressionError as exc:
                return self.unsure(step, path, parent, "condition", exc, [c.cond])
        if kind in LEAF_TYPES:
            return self.leaf(step, c, path, parent, scope)
        if kind == StepType.CONDITION:
            return self.check(step, c, path, parent, scope)
        if kind == StepType.LOOP:
            return self.loop(step, c, path, parent, scope)
        if kind == StepType.PARALLEL:
            item = self.entry(step, path, parent, True, f"{len(step.steps)} step(s) at once")
            child = scope.child(path + ".", self.assumed, self.local_ids)
            outcomes = [self.walk([s], child, path) for s in step.steps]
            return self.after_children(step, path, item, outcomes)
        if kind == StepType.BRANCH:
            return self.branch(step, c, path, parent, scope)
        if kind == StepType.WORKFLOW:
            return self.sub(step, c, step.workflow_id, path, parent, scope, f"runs workflow {step.workflow_id!r}")
        return self.would_fail(step, path, parent, f"unknown step type {kind!r}")

    def leaf(self, step: WorkflowStep, c: Compiled, path: str, parent: str | None, scope: Scope) -> _Outcome:
        try:
            params = render_params(step, c, scope.names)
        except ExpressionError as exc:
            exprs = [compile_expression(t) for t in template_expressions(step.params)]
            return self.unsure(step, path, parent, "params", exc, exprs)
        if _holds_unknown(params):
            self.entry(step, path, parent, None, f"params cannot be decided before the run: {_Unknown._WHY}")
            return _GO_ON, ""
        spec = self.env.registry.get(step.action) if step.action else None
        if spec is None:
            return self.would_fail(step, path, parent, f"unknown action {step.action!r}", params)
        if spec.params is not None:
            for _name, problem in param_problems(spec.name, spec.params, params):
                return self.would_fail(step, path, parent, problem, params)
        self.entry(step, path, parent, True, "would run", params)
        if step.output:
            scope.context[step.output] = UNKNOWN
            self.pending_outputs.add(step.output)
        return _GO_ON, ""

    def check(self, step: WorkflowStep, c: Compiled, path: str, parent: str | None, scope: Scope) -> _Outcome:
        if c.cond is None:
            return self.would_fail(step, path, parent, "condition step without a condition")
        try:
            value = evaluate_condition(c.cond, scope.names)
        except ExpressionError as exc:
            return self.unsure(step, path, parent, "check", exc, [c.cond])
        if value:
            self.entry(step, path, parent, True, "check passes")
            return _GO_ON, ""
        if step.on_false == OnFalse.FAIL:
            return self.would_fail(step, path, parent, f"condition is false: {step.condition}")
        if step.on_false == OnFalse.STOP:
            self.entry(step, path, parent, True, "check is false: the run would stop here")
            return _HALT, f"condition step {path!r} would stop the run"
        self.entry(step, path, parent, True, "check is false: the run would go on")
        return _GO_ON, ""

    def loop(self, step: WorkflowStep, c: Compiled, path: str, parent: str | None, scope: Scope) -> _Outcome:
        try:
            value = loop_value(c, scope.names)
        except ExpressionError as exc:
            exprs = [c.items] if c.items is not None else [compile_expression(t)
                                                            for t in template_expressions(step.items)]
            return self.unsure(step, path, parent, "items", exc, exprs)
        if _holds_unknown(value):
            self.entry(step, path, parent, None, f"items cannot be decided before the run: {_Unknown._WHY}")
            return _GO_ON, ""
        try:
            items = as_items(value)
        except StepProblem as exc:
            return self.would_fail(step, path, parent, str(exc))
        item = self.entry(step, path, parent, True, f"{len(items)} item(s)")
        outcomes = []
        for index, value in enumerate(items):
            child = scope.child(item_path(path, index), self.assumed, self.local_ids,
                                context=item_context(scope.context, step, index, value))
            outcomes.append(self.walk(step.steps, child, path))
            if outcomes[-1][0] != _GO_ON:
                break   # a failing item ends the loop (as fail-fast does for concurrent ones)
        return self.after_children(step, path, item, outcomes)

    def branch(self, step: WorkflowStep, c: Compiled, path: str, parent: str | None, scope: Scope) -> _Outcome:
        try:
            chosen = choose_case(c, scope.names)
        except ExpressionError as exc:
            return self.unsure(step, path, parent, "branch", exc, [cond for cond, _ in c.cases])
        if chosen is None:
            self.entry(step, path, parent, True, "no case matches")
            return _GO_ON, ""
        label, case = chosen
        if case.workflow is not None:
            return self.sub(step, c, case.workflow, path, parent, scope,
                            f"takes {case_label(label)}: workflow {case.workflow!r}")
        item = self.entry(step, path, parent, True, f"takes {case_label(label)}")
        outcome = self.walk(case.steps, scope.child(path + ".", self.assumed, self.local_ids), path)
        return self.after_children(step, path, item, [outcome])

    def sub(self, step: WorkflowStep, c: Compiled, workflow_id: str | None, path: str, parent: str | None,
            scope: Scope, reason: str) -> _Outcome:
        depth = scope.depth + 1
        try:
            sub = subworkflow(self.env.find_workflow, workflow_id, depth, self.env.max_depth)
        except StepProblem as exc:
            return self.would_fail(step, path, parent, str(exc))
        try:
            enter_subworkflow(scope.context, sub, step, c, scope.names)
        except ExpressionError as exc:
            exprs = [compile_expression(t) for t in template_expressions(step.params)]
            return self.unsure(step, path, parent, "params", exc, exprs)
        item = self.entry(step, path, parent, True, reason)
        child = scope.child(path + ".", self.assumed, self.local_ids, depth=depth, workflow_id=sub.workflow_id)
        return self.after_children(step, path, item, [self.walk(sub.steps, child, path)])

    def after_children(self, step: WorkflowStep, path: str, item: dict[str, Any],
                       outcomes: list[_Outcome]) -> _Outcome:
        """A composite after its children: a halt ends the run; a child's failure is the composite's, under
        the composite's own on_failure."""
        for outcome, why in outcomes:
            if outcome == _HALT:
                return outcome, why
        for outcome, why in outcomes:
            if outcome == _ABORT:
                return self.would_fail(step, path, item["parent_id"], why, item=item)
        return _GO_ON, ""


def plan(env: RunEnv, workflow: Workflow, context: Mapping[str, Any] | None = None,
         detection: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The plan of `workflow` for `context` (over the workflow's own) and `detection`; see the module."""
    ctx = dict(workflow.context)
    if context:
        ctx.update(context)
    return Planner(env, detection or {}).plan(workflow, ctx)


__all__ = ["UNKNOWN", "Planner", "plan"]
