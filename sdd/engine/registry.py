"""Actions as the engine sees them: `ActionSpec`, the per-engine registry, entry-point discovery, and
`current_step()` — the contextvar through which a running handler learns which step it is serving."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

from .errors import EngineError
from .specs.params import ParamSpec, param_specs

log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[Any]]
ENTRY_POINT_GROUP = "sdd.actions"
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class ActionSpec:
    """A named async handler, called as `handler(**params, context=ctx)`.

    `idempotent`: running it twice is harmless, so a run resumed after a crash may run it again.
    `destructive`: it changes the machine irreversibly (shown by `plan()`).
    `params`: the parameters it accepts (name → `ParamSpec`, or plain dicts such as
    `{"type": "string", "required": True}`), checked when a workflow is loaded and published in the
    workflow JSON Schema; None means undeclared: any parameters, checked only by the action."""

    name: str
    handler: Handler
    idempotent: bool = False
    destructive: bool = False
    description: str = ""
    params: Mapping[str, ParamSpec] | None = None

    def __post_init__(self) -> None:
        if self.params is not None:
            object.__setattr__(self, "params", MappingProxyType(param_specs(self.params) or {}))


@dataclass(frozen=True)
class StepInfo:
    """What a handler may want to know about the step it serves (see `current_step()`)."""

    run_id: str
    workflow_id: str
    step_id: str                      # the step's path
    attempt: int
    idempotency_key: str              # "run_id:step_id", stable across attempts and resumes
    detection: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    dry_run: bool = False
    phase: str = "run"                # a Phase: "rollback" while undoing the step
    step_result: Any = None           # in the rollback phase: the result of the step being undone
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)   # the run's labels


# The runner stores a plain tuple of StepInfo's fields (cheap on the hot path), followed by the run's
# waiting reporter; current_step() builds the StepInfo only when a handler asks for it.
_current_step: ContextVar[tuple[Any, ...] | None] = ContextVar("sdd_current_step", default=None)
_INFO_FIELDS = 10


def current_step() -> StepInfo | None:
    """The step being run in this task, or None outside a step."""
    raw = _current_step.get()
    return None if raw is None else StepInfo(*raw[:_INFO_FIELDS])


async def report_waiting(reason: str | None, since: float | None = None) -> None:
    """Tell the engine that the step being run waits before acting (`reason`: what holds it, e.g. a rate
    limit; `since`: when the wait began, default now), or, with None, that it waits no more. The engine
    publishes a `StepWaiting` event to its listeners (the history shows the step `waiting`) and awaits them.
    Outside a step it does nothing."""
    raw = _current_step.get()
    if raw is None or len(raw) <= _INFO_FIELDS:
        return
    await raw[_INFO_FIELDS](raw[2], raw[7], reason, since)


class ActionRegistry:
    """Name → ActionSpec for one engine (no global state)."""

    def __init__(self, specs: Iterable[ActionSpec] = ()):
        self._specs: dict[str, ActionSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: ActionSpec) -> None:
        if not isinstance(spec, ActionSpec):
            raise TypeError(f"expected an ActionSpec, got {type(spec).__name__}")
        if not callable(spec.handler):
            raise TypeError(f"action {spec.name!r}: handler is not callable")
        self._specs[spec.name] = spec

    def get(self, name: str) -> ActionSpec | None:
        return self._specs.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def names(self) -> frozenset[str]:
        return frozenset(self._specs)

    def declarations(self) -> dict[str, Mapping[str, ParamSpec] | None]:
        """Name → declared parameters (None: undeclared), what validation checks step params against."""
        return {name: spec.params for name, spec in self._specs.items()}


def spec_from_entry_point(name: str, obj: Any) -> ActionSpec:
    """An entry point's value is an ActionSpec or an async handler (then the entry point's name is used)."""
    if isinstance(obj, ActionSpec):
        return obj
    if callable(obj) and (inspect.iscoroutinefunction(obj)
                          or inspect.iscoroutinefunction(type(obj).__call__)):
        return ActionSpec(name=name, handler=obj, description=(inspect.getdoc(obj) or "").split("\n")[0])
    raise EngineError(f"entry point {name!r} in group {ENTRY_POINT_GROUP!r} is neither an ActionSpec "
                      f"nor an async handler")


def discover_entry_points(group: str = ENTRY_POINT_GROUP) -> tuple[list[ActionSpec], list[str]]:
    """Load every action offered through the entry-point group; a broken plugin is reported, not fatal."""
    specs: list[ActionSpec] = []
    errors: list[str] = []
    for ep in entry_points(group=group):
        try:
            specs.append(spec_from_entry_point(ep.name, ep.load()))
        except Exception as exc:  # noqa: BLE001 - one broken third-party plugin must not stop the others
            errors.append(f"{ep.name} ({ep.value}): {type(exc).__name__}: {exc}")
            log.warning("cannot load action %s from %s: %s", ep.name, ep.value, exc)
    return specs, errors


__all__ = ["ActionRegistry", "ActionSpec", "Handler", "StepInfo", "current_step", "discover_entry_points"]
