"""What a workflow *is*, as plain data: `Workflow`, `WorkflowStep`, `BranchCase`, `Trigger`, `Schedule`.

`to_dict()` gives the plain dict a workflow is stored and published as. Reading one back
(`Workflow.from_dict`, `Workflow.from_yaml`, `WorkflowStep.from_dict`) is loading, with validation, and
lives in `loader.py`, which installs those constructors on these classes (so this module imports nothing
of the loader's). How a workflow *runs* is the conductor's business (`sdd/engine/runner.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .vocabulary import DEFAULT_ON_FAILURE, DEFAULT_RETRIES_FOR_RETRY, TYPE_ACTIONS, OnFailure


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
        """How many times a failed attempt is tried again: max_retries, else 3 with on_failure: retry."""
        if self.max_retries is not None:
            return self.max_retries
        return DEFAULT_RETRIES_FOR_RETRY if self.on_failure == OnFailure.RETRY else 0

    # Installed by loader.py: validate a step dict and build the step (raises WorkflowValidationError).
    from_dict: ClassVar[Callable[[Mapping[str, Any]], WorkflowStep]]

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

    # Installed by loader.py: a validated workflow from a dict (`source` names it in issues) or a YAML file;
    # both raise WorkflowValidationError listing every issue.
    from_dict: ClassVar[Callable[..., Workflow]]
    from_yaml: ClassVar[Callable[[str | Path], Workflow]]

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
