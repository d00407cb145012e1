"""The semantic layer of validation: what the schema cannot express. What each step type needs and which
keys apply to it, duplicate step ids, unknown actions, params against the action's declared parameters,
expressions and templates that do not parse, references to unknown steps, sub-workflow self-references, and
cycles across a set of workflows; numbers that are not finite, and durations given as text that are not positive.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ExpressionError
from ..expressions import compile_expression, template_expressions
from .durations import MIN_SCHEDULE_EVERY, parse_duration
from .issues import Path_, _Collector, did_you_mean, format_path
from .params import Catalogue, param_problems
from .vocabulary import LEAF_TYPES, STEP_TYPES, TYPE_ACTIONS

# Keys that only mean something on some step types.
_TYPE_KEYS = {
    "items": {"loop"}, "as": {"loop"}, "item_name": {"loop"}, "concurrency": {"loop"}, "step": {"loop"},
    "steps": {"loop", "parallel"}, "fail_fast": {"parallel"}, "conditions": {"branch"},
    "workflow_id": {"workflow"}, "workflow": {"workflow"}, "on_false": {"condition"},
    "action": LEAF_TYPES, "rollback_action": LEAF_TYPES, "rollback_params": LEAF_TYPES,
    "max_retries": LEAF_TYPES, "retries": LEAF_TYPES, "retry_delay": LEAF_TYPES, "backoff": LEAF_TYPES,
    "max_delay": LEAF_TYPES, "jitter": LEAF_TYPES, "total_timeout": LEAF_TYPES,
    "params": LEAF_TYPES | {"workflow"},
}


def _check_expr(text: Any, path: Path_, c: _Collector, refs: list[tuple[str, Path_]]) -> None:
    if not isinstance(text, str):
        return
    try:
        compiled = compile_expression(text)
    except ExpressionError as exc:
        c.add(path, f"{format_path(path)} does not parse: {exc}")
        return
    _collect_refs(compiled.node, path, refs)


def _collect_refs(node: ast.AST, path: Path_, refs: list[tuple[str, Path_]]) -> None:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "steps":
            refs.append((sub.attr, path))
        elif (isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name) and sub.value.id == "steps"
              and isinstance(sub.slice, ast.Constant) and isinstance(sub.slice.value, str)):
            refs.append((sub.slice.value, path))


def _check_templates(value: Any, path: Path_, c: _Collector, refs: list[tuple[str, Path_]]) -> None:
    if isinstance(value, str):
        try:
            for text in template_expressions(value):
                _collect_refs(compile_expression(text).node, path, refs)
        except ExpressionError as exc:
            c.add(path, f"{format_path(path)}: template does not parse: {exc}")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _check_templates(v, path + (k,), c, refs)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_templates(v, path + (i,), c, refs)


class _Semantics:
    def __init__(self, c: _Collector, actions: Catalogue | None, workflow_id: str | None):
        self.c = c
        self.actions = actions
        self.workflow_id = workflow_id
        self.ids: dict[str, Path_] = {}
        self.refs: list[tuple[str, Path_]] = []
        self.subworkflows: list[tuple[str, Path_]] = []

    def steps(self, steps: Any, path: Path_) -> None:
        if not isinstance(steps, list):
            return
        for i, step in enumerate(steps):
            self.step(step, path + (i,))

    def step(self, step: Any, path: Path_) -> None:
        c = self.c
        if not isinstance(step, Mapping):
            return
        for key in ("timeout", "total_timeout"):
            positive_duration(step.get(key), (*path, key), c)
        sid = step.get("step_id")
        if isinstance(sid, str):
            if sid in self.ids:
                first = self.ids[sid]
                line, _ = c.marks.at(first)
                c.add(path + ("step_id",), f"duplicate step_id {sid!r} (first used at "
                                          f"{format_path(first)}{f', line {line}' if line else ''})")
            else:
                self.ids[sid] = path
        if "type" in step and "step_type" in step:
            c.add(path, "give either 'type' or 'step_type', not both")
        if "retries" in step and "max_retries" in step:
            c.add(path, "give either 'retries' or 'max_retries', not both")
        kind = step.get("type", step.get("step_type", "action"))
        _check_expr(step.get("condition"), path + ("condition",), c, self.refs)
        _check_templates(step.get("params"), path + ("params",), c, self.refs)
        _check_templates(step.get("rollback_params"), path + ("rollback_params",), c, self.refs)
        if kind not in STEP_TYPES:
            kind = "action" if "action" in step else None  # the schema reported the type
            if kind is None:
                return
        for key, kinds in _TYPE_KEYS.items():
            if key in step and kind not in kinds:
                article = "an" if kind[0] in "aeiou" else "a"
                c.add(path + (key,), f"{key!r} does not apply to {article} {kind} step (only to "
                                     f"{', '.join(sorted(kinds))})", key=True)
        if kind in LEAF_TYPES:
            action = step.get("action") or TYPE_ACTIONS.get(kind)
            if not action:
                c.add(path, f"step {sid!r} of type action needs an 'action'")
            else:
                self.action(action, path + ("action",) if "action" in step else path)
                self.params(action, step.get("params"), path, "params")
            rollback = step.get("rollback_action")
            if rollback:
                self.action(rollback, path + ("rollback_action",))
                # Without rollback_params, the step's own params are what the rollback action is given.
                if step.get("rollback_params") is not None:
                    self.params(rollback, step["rollback_params"], path, "rollback_params")
                elif isinstance(step.get("params"), Mapping) and self.actions is not None:
                    # The step's params (those its own action accepts) are what its rollback_action gets.
                    own = self.actions.get(action) if isinstance(action, str) else None
                    passed = {k: v for k, v in step["params"].items() if own is None or k in own}
                    self.params(rollback, passed, path, "params",
                                " (a step's params go to its rollback_action unless it has rollback_params)")
            if step.get("rollback_params") is not None and not rollback:
                c.add(path + ("rollback_params",), "rollback_params without a rollback_action", key=True)
        elif kind == "condition":
            if not step.get("condition"):
                c.add(path, f"condition step {sid!r} needs a 'condition'")
        elif kind == "loop":
            items = step.get("items")
            if items is None:
                c.add(path, f"loop step {sid!r} needs 'items' (an expression or a list)")
            elif isinstance(items, str):
                if "{{" in items:
                    _check_templates(items, path + ("items",), c, self.refs)
                else:
                    _check_expr(items, path + ("items",), c, self.refs)
            else:
                _check_templates(items, path + ("items",), c, self.refs)
            if not step.get("steps") and not step.get("step"):
                c.add(path, f"loop step {sid!r} needs 'step' or 'steps' to run for each item")
            if "as" in step and "item_name" in step:
                c.add(path, "give either 'as' or 'item_name', not both")
            if step.get("step") is not None:
                self.step(step["step"], path + ("step",))
            self.steps(step.get("steps"), path + ("steps",))
        elif kind == "parallel":
            if not step.get("steps"):
                c.add(path, f"parallel step {sid!r} needs 'steps'")
            self.steps(step.get("steps"), path + ("steps",))
        elif kind == "branch":
            self.branch(step, path)
        elif kind == "workflow":
            target = step.get("workflow_id", step.get("workflow"))
            if not target:
                c.add(path, f"workflow step {sid!r} needs 'workflow_id' (the sub-workflow to run)")
            elif isinstance(target, str):
                self.subworkflow(target, path + ("workflow_id" if "workflow_id" in step else "workflow",))

    def branch(self, step: Mapping[str, Any], path: Path_) -> None:
        c = self.c
        cases = step.get("conditions")
        if not cases:
            c.add(path, f"branch step {step.get('step_id')!r} needs 'conditions' ([{{if:, then:}}, {{else:}}])")
            return
        if not isinstance(cases, list):
            return
        for i, case in enumerate(cases):
            cpath = path + ("conditions", i)
            if not isinstance(case, Mapping):
                continue
            heads = [k for k in ("if", "elif", "else") if k in case]
            if len(heads) != 1:
                c.add(cpath, "each branch case has exactly one of 'if', 'elif' or 'else'")
                continue
            head = heads[0]
            if head == "else":
                if i != len(cases) - 1:
                    c.add(cpath, "'else' must be the last case of a branch")
                if "then" in case:
                    c.add(cpath + ("then",), "an 'else' case gives its steps under 'else', not 'then'", key=True)
                target = case["else"]
                tpath = cpath + ("else",)
            else:
                if head == "elif" and i == 0:
                    c.add(cpath, "a branch starts with 'if', not 'elif'")
                _check_expr(case[head], cpath + (head,), c, self.refs)
                if "then" not in case:
                    c.add(cpath, f"case {i} needs 'then' (steps or a workflow id)")
                    continue
                target = case["then"]
                tpath = cpath + ("then",)
            if isinstance(target, str):
                self.subworkflow(target, tpath)
            elif isinstance(target, Mapping):
                self.step(target, tpath)
            else:
                self.steps(target, tpath)

    def action(self, name: Any, path: Path_) -> None:
        if self.actions is None or not isinstance(name, str) or name in self.actions:
            return
        self.c.add(path, f"unknown action {name!r}{did_you_mean(name, self.actions)}")

    def params(self, action: Any, params: Any, path: Path_, key: str, note: str = "") -> None:
        """The step's params against the action's declaration (when the action declares its parameters)."""
        declared = self.actions.get(action) if self.actions is not None and isinstance(action, str) else None
        if declared is None or not isinstance(params if params is not None else {}, Mapping):
            return
        for name, message in param_problems(action, declared, params or {}):
            if name is None:
                self.c.add(path + ((key,) if params is not None else ()), message + note)
            else:
                self.c.add(path + (key, name), message + note, key=message.startswith(f"{action} has no"))

    def subworkflow(self, target: str, path: Path_) -> None:
        self.subworkflows.append((target, path))
        if target == self.workflow_id:
            self.c.add(path, f"workflow {target!r} runs itself as a sub-workflow (a cycle)")

    def finish(self) -> None:
        for ref, path in self.refs:
            if ref not in self.ids:
                self.c.add(path, f"refers to unknown step {ref!r}{did_you_mean(ref, self.ids)}")


def non_finite(data: Any, c: _Collector) -> None:
    """YAML's `.nan` and `.inf` (and floats too large to be one, `1.0e+999`) anywhere: no duration, limit or
    count of a workflow means them, and each compares in ways nothing downstream expects (a schedule of
    every `.nan` seconds fired in a loop that never yielded: the daemon stopped answering)."""
    stack: list[tuple[Any, Path_]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                spelled = ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
                c.add(path, f"{format_path(path) or 'the document'} must be a finite number, got {spelled}")
        elif isinstance(value, Mapping):
            stack.extend((v, (*path, k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(value))


def _seconds(value: Any) -> float | None:
    try:
        return parse_duration(value)
    except (TypeError, ValueError):
        return None  # (the schema layer says what is wrong with it)


def positive_duration(value: Any, path: Path_, c: _Collector) -> None:
    """A duration given as text must come to more than zero ("0s", "0m"): the schema checks numbers."""
    if isinstance(value, str) and (seconds := _seconds(value)) is not None and seconds <= 0:
        c.add(path, f"{format_path(path)} must be a positive duration, got {value!r}")


def _trigger(trigger: Any, c: _Collector, refs: list[tuple[str, Path_]]) -> None:
    if not isinstance(trigger, Mapping):
        return
    if "type" in trigger and "types" in trigger:
        c.add(("trigger",), "give either 'type' or 'types', not both")
    _check_expr(trigger.get("when"), ("trigger", "when"), c, refs)
    sched = trigger.get("schedule")
    if isinstance(sched, Mapping):
        every = sched.get("every")
        seconds = None if isinstance(every, (int, float)) and every <= 0 else _seconds(every)
        if seconds is not None and seconds < MIN_SCHEDULE_EVERY:  # (NaN is non_finite's)
            c.add(("trigger", "schedule", "every"),
                  f"trigger.schedule.every must be at least {MIN_SCHEDULE_EVERY:g}s, got {every!r}")
        if "every" in sched and "at" in sched:
            c.add(("trigger", "schedule"), "give either 'every' or 'at', not both")
        elif "every" not in sched and "at" not in sched:
            c.add(("trigger", "schedule"), "a schedule needs 'every' (e.g. \"6h\") or 'at' (e.g. \"03:00\")")


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Each cycle once, as a list of workflow ids starting and ending at the same id."""
    cycles: list[list[str]] = []
    seen_cycles: set[frozenset[str]] = set()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                key = frozenset(cycle)
                if key not in seen_cycles:
                    seen_cycles.add(key)
                    cycles.append(cycle)
            elif state.get(nxt) is None:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


__all__ = ["find_cycles"]
