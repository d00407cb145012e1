"""A step's expressions and templates, parsed once and kept on the step, so a run only evaluates them.

Loaded workflows are compiled at load time (`precompile`); a step built in code is compiled on first use.
"""

from __future__ import annotations

from typing import Any

from ..expressions import Expression, Renderer, compile_expression, compile_template, compile_value
from .model import Workflow, WorkflowStep


class Compiled:
    """A step's expressions and templates, parsed once and kept on the step (`step._compiled`)."""

    __slots__ = ("cases", "cond", "items", "items_value", "params", "rollback_params")

    def __init__(self, step: WorkflowStep):
        self.cond: Expression | None = compile_expression(step.condition) if step.condition else None
        self.params: Renderer | None = compile_value(step.params)
        self.rollback_params: Renderer | None = (compile_value(step.rollback_params)
                                                 if step.rollback_params is not None else None)
        self.items: Expression | None = None
        self.items_value: Any = None
        if isinstance(step.items, str):
            tpl = compile_template(step.items)
            self.items = tpl.whole if tpl is not None and tpl.whole is not None else compile_expression(
                step.items)
        elif step.items is not None:
            self.items_value = compile_value(step.items) or step.items
        self.cases = [(compile_expression(c.condition) if c.condition is not None else None, c)
                      for c in step.conditions]


def precompile(workflow: Workflow) -> Workflow:
    """Parse every expression and template of `workflow` now (at load time) instead of on first run.
    Raises ExpressionError; loaded workflows were validated, so that means a workflow built in code."""
    for _, step in workflow.iter_steps():
        compiled(step)
    return workflow


def compiled(step: WorkflowStep) -> Compiled:
    c = step._compiled
    if c is None:
        c = step._compiled = Compiled(step)
    return c


__all__ = ["Compiled", "compiled", "precompile"]
