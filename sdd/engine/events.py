"""Events the engine publishes to its listeners, in order, one run at a time.

A listener is `Callable[[EngineEvent], Awaitable[None] | None]`; when it returns an awaitable the engine
awaits it before going on (the history recorder uses that to commit a step's intent before it acts).
Times are `time.time()` floats; results and params are plain JSON-able data. Every event carries the run's
`labels` (what the caller of `engine.start(labels=...)` attached: ids, trigger, uid), the same read-only
mapping for every event of one run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .results import NO_LABELS, WorkflowResult
from .specs.model import Workflow


@dataclass(frozen=True, slots=True)
class RunStarted:
    run_id: str
    workflow_id: str
    detection_id: str | None
    started_at: float
    dry_run: bool
    resumed: bool
    workflow: Workflow
    context: Mapping[str, Any]
    labels: Mapping[str, str] = field(default_factory=lambda: NO_LABELS)


@dataclass(frozen=True, slots=True)
class StepStarted:
    run_id: str
    step_id: str            # the step's path: "quarantine", "loop[3].child", "par.child", "sub.child"
    parent_id: str | None
    step_type: str
    action: str | None
    attempt: int
    idempotent: bool
    phase: str              # a Phase: "run" | "rollback"
    started_at: float
    params: Mapping[str, Any]
    labels: Mapping[str, str] = field(default_factory=lambda: NO_LABELS)


@dataclass(frozen=True, slots=True)
class StepFinished:
    run_id: str
    step_id: str
    status: str             # a StepStatus value
    attempts: int
    started_at: float
    finished_at: float
    result: Any
    error: str | None
    phase: str
    labels: Mapping[str, str] = field(default_factory=lambda: NO_LABELS)


@dataclass(frozen=True, slots=True)
class RunFinished:
    run_id: str
    workflow_id: str
    status: str             # a RunStatus value
    started_at: float
    finished_at: float
    error: str | None
    result: WorkflowResult
    labels: Mapping[str, str] = field(default_factory=lambda: NO_LABELS)


@dataclass(frozen=True, slots=True)
class StepWaiting:
    """A running step's handler waits before acting (a guard holds it: `reason`), or waits no more
    (`reason` None). Reported by the handler through `report_waiting()`; `since` is when the wait began."""

    run_id: str
    step_id: str
    phase: str
    reason: str | None
    since: float
    labels: Mapping[str, str] = field(default_factory=lambda: NO_LABELS)


EngineEvent = RunStarted | StepStarted | StepFinished | RunFinished | StepWaiting
Listener = Callable[[EngineEvent], Awaitable[None] | None]

__all__ = ["NO_LABELS", "EngineEvent", "Listener", "RunFinished", "RunStarted", "StepFinished", "StepStarted",
           "StepWaiting"]
