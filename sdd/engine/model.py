"""What a workflow *is*: `Workflow`, `WorkflowStep`, `Trigger`, `Schedule`, and what a run *gave*:
`WorkflowResult`, `StepResult`, plus `PriorStep` (a step's recorded outcome, used to resume a run).

Everything round-trips through plain dicts (`to_dict` / `from_dict`); `from_dict` validates (see
`validation.py`) so a bad snapshot fails loudly instead of half-running. How a workflow *runs* lives in
`runner.py`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

STEP_TYPES = ("action", "notification", "script", "webhook", "condition", "loop", "parallel", "branch",
              "workflow")
LEAF_TYPES = frozenset({"action", "notification", "script", "webhook"})
# Step types that are shorthands for one built-in action.
TYPE_ACTIONS = {"notification": "send_notification", "script": "run_script", "webhook": "call_webhook"}
ON_FAILURE = ("abort", "continue", "skip", "retry", "rollback")
ON_INTERRUPT = ("fail", "retry", "rollback")
ON_FALSE = ("stop", "fail", "continue")
DEFAULT_ON_FAILURE = "abort"
DEFAULT_RETRIES_FOR_RETRY = 3   # `on_failure: retry` without max_retries


@dataclass
class BranchCase:
    """One arm of a branch: `if` (None for else) and either inline `steps` or a `workflow` id."""

    condition: str | None
    steps: list[WorkflowStep] = field(default_factory=list)
    workflow: str | None = None

    def to_dict(self) -> dict[str, Any]:
        target: Any = self.workflow if self.workflow is not None else [s.to_dict() for s in self.steps]
        if self.condition is None:
            return {"else": target}
        return {"if": self.condition, "then": target}


@dataclass
class WorkflowStep:
    """One step. Field names of the original engine (`step_type`, `retries`) keep working."""

    step_id: str
    name: str = ""
    step_type: str = "action"
    action: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    condition: str | None = None
    on_failure: str = DEFAULT_ON_FAILURE
    rollback_action: str | None = None
    rollback_params: dict[str, Any] | None = None
    timeout: float | None = None            # per attempt
    total_timeout: float | None = None      # whole step, every attempt and delay included
    max_retries: int | None = None          # None: 0, or 3 with on_failure: retry
    retry_delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.1                     # +/- this fraction of each delay
    output: str | None = None
    description: str = ""
    # loop
    items: Any = None                       # an expression string or a list
    item_name: str = "item"                 # YAML: `as`
    concurrency: int = 1
    # loop / parallel children
    steps: list[WorkflowStep] = field(default_factory=list)
    # parallel
    fail_fast: bool = True
    # branch
    conditions: list[BranchCase] = field(default_factory=list)
    # workflow (sub-workflow)
    workflow_id: str | None = None
    # condition step: what a false check does
    on_false: str = "stop"
    retries: InitVar[int | None] = None     # the original's name for max_retries
    # Compiled expressions/templates, filled by the runner on first use (not part of the model).
    _compiled: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self, retries: int | None) -> None:
        if retries is not None and self.max_retries is None:
            self.max_retries = retries
        if self.step_type in TYPE_ACTIONS and not self.action:
            self.action = TYPE_ACTIONS[self.step_type]

    @property
    def type(self) -> str:
        return self.step_type

    @property
    def effective_retries(self) -> int:
        if self.max_retries is not None:
            return self.max_retries
        return DEFAULT_RETRIES_FOR_RETRY if self.on_failure == "retry" else 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkflowStep:
        from .validation import validate_step_dict
        validate_step_dict(data)
        return build_step(data)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"step_id": self.step_id, "type": self.step_type}
        if self.name:
            d["name"] = self.name
        if self.description:
            d["description"] = self.description
        if self.action is not None and not (self.step_type in TYPE_ACTIONS
                                            and self.action == TYPE_ACTIONS[self.step_type]):
            d["action"] = self.action
        if self.params:
            d["params"] = self.params
        for key in ("condition", "rollback_action", "rollback_params", "timeout", "total_timeout",
                    "max_retries", "output", "items", "workflow_id"):
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        if self.on_failure != DEFAULT_ON_FAILURE:
            d["on_failure"] = self.on_failure
        for key, default in (("retry_delay", 1.0), ("backoff", 2.0), ("max_delay", 30.0), ("jitter", 0.1),
                             ("concurrency", 1), ("fail_fast", True), ("on_false", "stop")):
            if getattr(self, key) != default:
                d[key] = getattr(self, key)
        if self.item_name != "item":
            d["as"] = self.item_name
        if self.steps:
            d["steps"] = [s.to_dict() for s in self.steps]
        if self.conditions:
            d["conditions"] = [c.to_dict() for c in self.conditions]
        return d


WorkflowStep.retries = property(  # type: ignore[attr-defined, assignment]
    lambda self: self.effective_retries, doc="Alias of max_retries (the original engine's name).")


@dataclass(frozen=True)
class Schedule:
    """Periodic trigger: `every` seconds, or daily `at` "HH:MM" local time."""

    every: float | None = None
    at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("every", self.every), ("at", self.at)) if v is not None}


@dataclass(frozen=True)
class Trigger:
    """When the matcher starts this workflow for a detection (or the scheduler, for `schedule`)."""

    types: tuple[str, ...] = ()
    when: str | None = None
    priority: int = 0
    schedule: Schedule | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.types:
            d["type"] = self.types[0] if len(self.types) == 1 else list(self.types)
        if self.when is not None:
            d["when"] = self.when
        if self.priority:
            d["priority"] = self.priority
        if self.schedule is not None:
            d["schedule"] = self.schedule.to_dict()
        return d


@dataclass
class Workflow:
    """A named list of steps plus how to trigger it and what to do when it fails or is interrupted."""

    workflow_id: str
    name: str = ""
    description: str = ""
    steps: list[WorkflowStep] = field(default_factory=list)
    trigger: Trigger | None = None
    rollback_on_failure: bool = False
    timeout: float | None = None
    context: dict[str, Any] = field(default_factory=dict)
    on_interrupt: str = "fail"
    source: str | None = None

    @classmethod
    def from_yaml(cls, path: str | Path) -> Workflow:
        from .loader import load_workflow
        return load_workflow(path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> Workflow:
        from .compilation import precompile
        from .validation import validate_workflow_dict
        validate_workflow_dict(data, source=source)
        return precompile(build_workflow(data, source=source))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"workflow_id": self.workflow_id, "name": self.name}
        if self.description:
            d["description"] = self.description
        if self.trigger is not None:
            d["trigger"] = self.trigger.to_dict()
        d["rollback_on_failure"] = self.rollback_on_failure
        if self.timeout is not None:
            d["timeout"] = self.timeout
        if self.context:
            d["context"] = self.context
        if self.on_interrupt != "fail":
            d["on_interrupt"] = self.on_interrupt
        d["steps"] = [s.to_dict() for s in self.steps]
        return d

    def iter_steps(self) -> list[tuple[str, WorkflowStep]]:
        """Every step with its static path (loop children as `loop[*].child`)."""
        out: list[tuple[str, WorkflowStep]] = []

        def walk(steps: list[WorkflowStep], prefix: str) -> None:
            for s in steps:
                path = prefix + s.step_id
                out.append((path, s))
                if s.step_type == "loop":
                    walk(s.steps, path + "[*].")
                else:
                    walk(s.steps, path + ".")
                for case in s.conditions:
                    walk(case.steps, path + ".")
        walk(self.steps, "")
        return out


# ---- building from validated dicts -------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like "90", "30s", "5m", "6h", "1d", "1h30m"."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")  # noqa: TRY004 - callers catch ValueError
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if text[pos:m.start()].strip():
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or text[pos:].strip():
        raise ValueError(f"not a duration: {value!r} (use seconds or e.g. 30s, 5m, 6h, 1d)")
    return total


def _target(value: Any) -> tuple[list[WorkflowStep], str | None]:
    if isinstance(value, str):
        return [], value
    if isinstance(value, Mapping):
        return [build_step(value)], None
    return [build_step(s) for s in value or ()], None


def build_step(d: Mapping[str, Any]) -> WorkflowStep:
    step_type = d.get("type", d.get("step_type", "action"))
    children: list[WorkflowStep] = [build_step(s) for s in d.get("steps") or ()]
    if d.get("step") is not None:
        children.insert(0, build_step(d["step"]))
    cases: list[BranchCase] = []
    for case in d.get("conditions") or ():
        if "else" in case:
            steps, wf = _target(case["else"])
            cases.append(BranchCase(None, steps, wf))
        else:
            steps, wf = _target(case.get("then"))
            cases.append(BranchCase(case.get("if", case.get("elif")), steps, wf))
    retries = d.get("max_retries", d.get("retries"))
    return WorkflowStep(
        step_id=str(d["step_id"]),
        name=d.get("name") or "",
        step_type=step_type,
        action=d.get("action"),
        params=dict(d.get("params") or {}),
        condition=d.get("condition"),
        on_failure=d.get("on_failure", DEFAULT_ON_FAILURE),
        rollback_action=d.get("rollback_action"),
        rollback_params=d.get("rollback_params"),
        timeout=None if d.get("timeout") is None else parse_duration(d["timeout"]),
        total_timeout=None if d.get("total_timeout") is None else parse_duration(d["total_timeout"]),
        max_retries=retries,
        retry_delay=float(d.get("retry_delay", 1.0)),
        backoff=float(d.get("backoff", 2.0)),
        max_delay=float(d.get("max_delay", 30.0)),
        jitter=float(d.get("jitter", 0.1)),
        output=d.get("output"),
        description=d.get("description") or "",
        items=d.get("items"),
        item_name=d.get("as", d.get("item_name", "item")),
        concurrency=int(d.get("concurrency", 1)),
        steps=children,
        fail_fast=bool(d.get("fail_fast", True)),
        conditions=cases,
        workflow_id=d.get("workflow_id", d.get("workflow")),
        on_false=d.get("on_false", "stop"),
    )


def build_trigger(d: Mapping[str, Any] | None) -> Trigger | None:
    if d is None:
        return None
    types = d.get("type", d.get("types", ()))
    if isinstance(types, str):
        types = (types,)
    sched = d.get("schedule")
    schedule = None
    if sched is not None:
        schedule = Schedule(every=None if sched.get("every") is None else parse_duration(sched["every"]),
                            at=sched.get("at"))
    return Trigger(types=tuple(types), when=d.get("when"), priority=int(d.get("priority", 0)),
                   schedule=schedule)


def build_workflow(d: Mapping[str, Any], source: str | None = None) -> Workflow:
    return Workflow(
        workflow_id=str(d["workflow_id"]),
        name=d.get("name") or str(d["workflow_id"]),
        description=d.get("description") or "",
        steps=[build_step(s) for s in d.get("steps") or ()],
        trigger=build_trigger(d.get("trigger")),
        rollback_on_failure=bool(d.get("rollback_on_failure", False)),
        timeout=None if d.get("timeout") is None else parse_duration(d["timeout"]),
        context=dict(d.get("context") or {}),
        on_interrupt=d.get("on_interrupt", "fail"),
        source=source if source is not None else d.get("source"),
    )
