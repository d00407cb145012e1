"""`RunState`: one execution's state and how its outcomes are recorded — each step's `StepResult` by path,
the events delivered to the listeners, the completed steps that have something to undo. The walk over the
steps (`runner.Run`) and its helpers (composite steps, resume, rollback) record through it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from .env import RunEnv
from .errors import ActionError
from .events import EngineEvent, StepFinished, StepStarted, StepWaiting
from .flow import _Abort
from .results import PriorStep, StepResult
from .scope import Scope, StepsView
from .semantics import carries_on, failed_status, rolls_back
from .specs.model import Workflow, WorkflowStep
from .specs.vocabulary import OnFailure
from .statuses import Phase, RunStatus, StepStatus

log = logging.getLogger("sdd.engine.runner")

EMPTY: Mapping[str, Any] = {}
_SKIPPED, _CANCELLED, _INTERRUPTED = StepStatus.SKIPPED, StepStatus.CANCELLED, StepStatus.INTERRUPTED
_RUN = Phase.RUN


class RunState:
    """One execution of a workflow: what it was given, what it has recorded so far, and its flags."""

    def __init__(self, env: RunEnv, workflow: Workflow, context: dict[str, Any],
                 detection: Mapping[str, Any] | None, run_id: str, dry_run: bool,
                 prior: Mapping[str, PriorStep] | None, labels: Mapping[str, str]):
        self.env = env
        self.registry = env.registry
        self.listeners = env.listeners
        self.workflow = workflow
        self.context = context
        self.detection: Mapping[str, Any] = detection if detection is not None else EMPTY
        self.run_id = run_id
        self.dry_run = dry_run
        self.prior = prior
        self.labels = labels
        self.step_results: dict[str, StepResult] = {}
        self.local_ids: dict[str, str] = {}
        # (step, path, params, result, scope) of completed steps that have a rollback_action, in order.
        self.undo: list[tuple[WorkflowStep, str, Any, Any, Scope]] = []
        self.started = False
        self.cancel_requested = False
        self.interrupt = False
        self.finishing = False
        self.status = RunStatus.PENDING

    async def run_steps(self, steps: list[WorkflowStep], scope: Scope, parent: str | None = None) -> None:
        """Walk `steps` in order (the runner's; composite steps call it for their children)."""
        raise NotImplementedError

    def steps_view(self, prefix: str = "") -> StepsView:
        return StepsView(self.step_results, self.local_ids, prefix)

    def step_info(self, scope: Scope, path: str, attempt: int, phase: str = _RUN, result: Any = None
                  ) -> tuple[Any, ...]:
        """The fields of the StepInfo a handler sees through `current_step()` (a tuple: cheap to build)."""
        return (self.run_id, scope.workflow_id, path, attempt, f"{self.run_id}:{path}", self.detection,
                self.dry_run, phase, result, self.labels, self.report_waiting)

    async def report_waiting(self, path: str, phase: str, reason: str | None, since: float | None) -> None:
        """A handler's `report_waiting()`: the step at `path` waits (or no longer waits) before it acts."""
        if self.listeners and not self.dry_run:
            await self.emit(StepWaiting(self.run_id, path, phase, reason, time.time() if since is None else since,
                                        self.labels))

    # -- events
    async def emit(self, event: EngineEvent, *, strict: bool = False) -> None:
        """Delivers `event` to every listener. A failing listener is logged and the run goes on — except
        when `strict` (the intent of a non-idempotent step): a side effect whose intent could not be
        recorded could be repeated after a crash, so the attempt fails (retryably) before it acts."""
        for listener in self.listeners:
            try:
                ret = listener(event)
                if ret is not None:
                    await ret
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if strict:
                    raise ActionError(f"could not record the step's intent before acting: {exc}") from exc
                log.exception("engine listener %r failed on %s", listener, type(event).__name__)

    # -- recording outcomes
    def record(self, path: str, step: WorkflowStep, status: StepStatus, result: Any, error: str | None,
               attempts: int, started: float, finished: float, reason: str | None = None) -> StepResult:
        sr = StepResult(path, status, result, error, attempts, started, finished, step.step_type, step.action,
                        None, reason)
        self.step_results[path] = sr
        if path != step.step_id:
            self.local_ids[step.step_id] = path
        return sr

    def idempotent(self, step: WorkflowStep) -> bool:
        spec = self.registry.get(step.action) if step.action else None
        return spec.idempotent if spec is not None else False

    async def skip(self, step: WorkflowStep, path: str, parent: str | None, reason: str) -> None:
        now = time.time()
        self.record(path, step, _SKIPPED, None, None, 0, now, now, reason)
        if self.listeners:
            await self.emit(StepStarted(self.run_id, path, parent, step.step_type, step.action, 0,
                                        self.idempotent(step), _RUN, now, EMPTY, self.labels))
            await self.emit(StepFinished(self.run_id, path, _SKIPPED, 0, now, now, None, None, _RUN,
                                         self.labels))

    async def fail(self, step: WorkflowStep, path: str, parent: str | None, started: float, attempts: int,
                   error: str, child_rollback: bool = False, announce: bool = False) -> None:
        """Record a failed step and apply its on_failure policy (raise _Abort, or carry on)."""
        now = time.time()
        status = failed_status(step)
        self.record(path, step, status, None, error, attempts, started, now,
                    "failed, skipped by on_failure: skip" if step.on_failure == OnFailure.SKIP else None)
        if self.listeners:
            if announce:
                await self.emit(StepStarted(self.run_id, path, parent, step.step_type, step.action, 0,
                                            self.idempotent(step), _RUN, started, EMPTY, self.labels))
            await self.emit(StepFinished(self.run_id, path, status, attempts, started, now, None, error, _RUN,
                                         self.labels))
        if carries_on(step):
            return
        raise _Abort(path, f"step {path!r} failed: {error}", rollback=rolls_back(step) or child_rollback)

    async def cancelled(self, step: WorkflowStep, path: str, started: float, attempts: int) -> None:
        now = time.time()
        status = _INTERRUPTED if self.interrupt else _CANCELLED
        error = "interrupted" if self.interrupt else "cancelled"
        self.record(path, step, status, None, error, attempts, started, now)
        if self.listeners:
            await asyncio.shield(self.emit(StepFinished(self.run_id, path, status, attempts, started, now, None,
                                                        error, _RUN, self.labels)))


__all__ = ["EMPTY", "RunState"]
