"""`engine.plan()`: what each step would do for a given context and detection, running nothing.

Conditions are evaluated and parameters rendered exactly as a run would, assuming earlier steps complete
(`steps.<id>.status` is "completed"); what depends on their results, which are unknown until they run,
is reported as undecided (`would_run: None`) with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .compilation import compiled
from .errors import ExpressionError
from .expressions import evaluate, evaluate_condition
from .model import LEAF_TYPES, Workflow, WorkflowStep

if TYPE_CHECKING:
    from .engine import WorkflowEngine


class _Planner:
    def __init__(self, engine: WorkflowEngine, detection: Mapping[str, Any]):
        self.engine = engine
        self.detection = detection
        self.out: list[dict[str, Any]] = []
        self.steps: dict[str, Any] = {}

    def names(self, context: Mapping[str, Any]) -> dict[str, Any]:
        return {"context": context, "detection": self.detection, "steps": self.steps}

    def entry(self, step: WorkflowStep, path: str, would_run: bool | None, reason: str,
              params: Any = None) -> dict[str, Any]:
        spec = self.engine.registry.get(step.action) if step.action else None
        item = {"step_id": path, "step_type": step.step_type, "action": step.action, "would_run": would_run,
                "reason": reason, "params": params,
                "irreversible": bool(spec is not None and spec.destructive and not step.rollback_action),
                "idempotent": bool(spec is not None and spec.idempotent)}
        self.out.append(item)
        if would_run:
            # Later expressions may look at it: the plan assumes it completes; its result is unknown (None).
            self.steps.setdefault(step.step_id, {"status": "completed", "result": None, "error": None,
                                                 "attempts": 1})
        return item

    def walk(self, steps: list[WorkflowStep], prefix: str, context: dict[str, Any], depth: int) -> bool:
        """False when a condition step would stop the run here."""
        for step in steps:
            if not self.step(step, prefix + step.step_id, context, depth):
                return False
        return True

    def step(self, step: WorkflowStep, path: str, context: dict[str, Any], depth: int) -> bool:
        names = self.names(context)
        try:
            c = compiled(step)
        except ExpressionError as exc:
            self.entry(step, path, False, f"invalid expression: {exc}")
            return True
        kind = step.step_type
        if c.cond is not None and kind != "condition":
            try:
                if not evaluate_condition(c.cond, names):
                    self.entry(step, path, False, "condition is false")
                    return True
            except ExpressionError as exc:
                self.entry(step, path, None, f"condition cannot be decided before the run: {exc}")
                return True
        if kind in LEAF_TYPES:
            spec = self.engine.registry.get(step.action) if step.action else None
            try:
                params = step.params if c.params is None else c.params.fn(names)
            except ExpressionError as exc:
                self.entry(step, path, None, f"params depend on the run: {exc}")
                return True
            if spec is None:
                self.entry(step, path, False, f"unknown action {step.action!r}: the step would fail", params)
            else:
                self.entry(step, path, True, "would run", params)
            return True
        if kind == "condition":
            try:
                value = evaluate_condition(c.cond, names) if c.cond is not None else False
            except ExpressionError as exc:
                self.entry(step, path, None, f"check cannot be decided before the run: {exc}")
                return True
            if value:
                self.entry(step, path, True, "check passes")
                return True
            effect = {"stop": "the run would stop here", "fail": "the step would fail",
                      "continue": "the run would go on"}[step.on_false]
            self.entry(step, path, True, f"check is false: {effect}")
            return step.on_false == "continue"
        if kind == "loop":
            try:
                if c.items is not None:
                    items = evaluate(c.items, names)
                elif c.items_value is not None and hasattr(c.items_value, "fn"):
                    items = c.items_value.fn(names)
                else:
                    items = c.items_value
            except ExpressionError as exc:
                self.entry(step, path, None, f"items cannot be known before the run: {exc}")
                return True
            if isinstance(items, Mapping):
                items = [{"key": k, "value": v} for k, v in items.items()]
            if not isinstance(items, (list, tuple)):
                self.entry(step, path, False, f"items is a {type(items).__name__}, not a list: the step would fail")
                return True
            self.entry(step, path, True, f"{len(items)} item(s)")
            for i, item in enumerate(items):
                ctx = dict(context)
                ctx[step.item_name] = item
                ctx["loop_index"] = i
                self.walk(step.steps, f"{path}[{i}].", ctx, depth)
            return True
        if kind == "parallel":
            self.entry(step, path, True, f"{len(step.steps)} step(s) at once")
            for child in step.steps:
                self.step(child, f"{path}.{child.step_id}", context, depth)
            return True
        if kind == "branch":
            for index, (cond, case) in enumerate(c.cases):
                if cond is not None:
                    try:
                        if not evaluate_condition(cond, names):
                            continue
                    except ExpressionError as exc:
                        self.entry(step, path, None, f"case {index} cannot be decided before the run: {exc}")
                        return True
                label = f"case {index}" if cond is not None else "else"
                if case.workflow is not None:
                    self.entry(step, path, True, f"takes {label}: workflow {case.workflow!r}")
                    return self.sub(step, case.workflow, path, context, depth)
                self.entry(step, path, True, f"takes {label}")
                return self.walk(case.steps, path + ".", context, depth)
            self.entry(step, path, True, "no case matches")
            return True
        if kind == "workflow":
            self.entry(step, path, True, f"runs workflow {step.workflow_id!r}")
            return self.sub(step, step.workflow_id or "", path, context, depth)
        self.entry(step, path, False, f"unknown step type {kind!r}")
        return True

    def sub(self, step: WorkflowStep, workflow_id: str, path: str, context: dict[str, Any], depth: int) -> bool:
        sub = self.engine.workflows.get(workflow_id)
        if sub is None:
            self.out[-1].update(would_run=False, reason=f"unknown workflow {workflow_id!r}: the step would fail")
            return True
        if depth + 1 > self.engine.max_depth:
            self.out[-1].update(would_run=False, reason="sub-workflow depth limit reached: the step would fail")
            return True
        for key, value in sub.context.items():
            context.setdefault(key, value)
        return self.walk(sub.steps, path + ".", context, depth + 1)


def plan(engine: WorkflowEngine, workflow: Workflow, context: Mapping[str, Any] | None = None,
         detection: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    ctx = dict(workflow.context)
    if context:
        ctx.update(context)
    planner = _Planner(engine, detection or {})
    planner.walk(workflow.steps, "", ctx, 0)
    return planner.out
