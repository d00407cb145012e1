"""How a workflow *runs*: one `Run` per execution, a tree walk over the steps on one asyncio task.

Sequential steps are awaited directly (no task per step); only `parallel` children and concurrent loop
items get tasks. Failure policy (`on_failure`), retries, timeouts and cancellation are decided here; the
walk's helpers live beside it: composite steps (`composite.py`), resume from `prior` (`resume.py`),
rollback (`rollback.py`), one attempt's timeout, error text and retry delay (`attempt.py`), parsed
expressions (`compilation.py`), the names expressions see (`scope.py`) and the signals that unwind the walk
(`flow.py`). What a step *does* is its action's business.

Cancellation of a step is delivered to its handler as `asyncio.CancelledError`; a handler that started a
subprocess must kill it when it sees that (the built-in actions do).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .attempt import call_with_timeout, describe, retry_delay
from .compilation import compiled
from .errors import ActionError, ExpressionError, is_retryable
from .events import RunFinished, RunStarted, StepFinished, StepStarted
from .expressions import evaluate_condition
from .flow import _Abort, _Halt
from .model import LEAF_TYPES, Workflow, WorkflowStep
from .registry import _current_step
from .results import PriorStep, StepResult, WorkflowResult
from .resume import resume_step
from .rollback import rollback_run
from .scope import Scope, StepsView
from .statuses import RunStatus, StepStatus

if TYPE_CHECKING:
    from .engine import WorkflowEngine

log = logging.getLogger(__name__)

_EMPTY: Mapping[str, Any] = {}
_COMPLETED, _FAILED, _SKIPPED = StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED
_CANCELLED, _INTERRUPTED = StepStatus.CANCELLED, StepStatus.INTERRUPTED


class Run:
    """One execution of a workflow: walks its steps, records each one's result and emits the events."""

    def __init__(self, engine: WorkflowEngine, workflow: Workflow, context: dict[str, Any],
                 detection: Mapping[str, Any] | None, run_id: str, dry_run: bool,
                 prior: Mapping[str, PriorStep] | None):
        self.engine = engine
        self.workflow = workflow
        self.context = context
        self.detection: Mapping[str, Any] = detection if detection is not None else _EMPTY
        self.run_id = run_id
        self.dry_run = dry_run
        self.prior = prior
        self.listeners = engine._listeners
        self.step_results: dict[str, StepResult] = {}
        self.local_ids: dict[str, str] = {}
        # (step, path, params, result, scope) of completed steps that have a rollback_action, in order.
        self.undo: list[tuple[WorkflowStep, str, Any, Any, Scope]] = []
        self.started = False
        self.cancel_requested = False
        self.interrupt = False
        self.finishing = False
        self.status = RunStatus.PENDING

    # -- events
    async def emit(self, event: Any, *, strict: bool = False) -> None:
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

    # -- entry point
    async def main(self) -> WorkflowResult:
        wf = self.workflow
        started = time.time()
        t0 = time.perf_counter()
        self.started = True
        self.status = RunStatus.RUNNING
        try:
            if self.listeners:
                await self.emit(RunStarted(self.run_id, wf.workflow_id, self.detection.get("id"), started,
                                           self.dry_run, self.prior is not None, wf, self.context))
            steps = StepsView(self)
            scope = Scope({"context": self.context, "detection": self.detection, "steps": steps},
                          self.context, "", 0, wf.workflow_id)
            status, error, rollback = RunStatus.COMPLETED, None, False
            try:
                if self.cancel_requested:
                    raise asyncio.CancelledError
                if wf.timeout is not None:
                    try:
                        async with asyncio.timeout(wf.timeout) as deadline:
                            await self.run_steps(wf.steps, scope)
                    except TimeoutError:
                        if not deadline.expired():
                            raise
                        status, error = RunStatus.FAILED, f"run timed out after {wf.timeout:g}s"
                        rollback = wf.rollback_on_failure
                else:
                    await self.run_steps(wf.steps, scope)
            except _Halt:
                pass
            except _Abort as stop:
                status, error = stop.status, stop.error
                rollback = stop.rollback or (status is RunStatus.FAILED and wf.rollback_on_failure)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                if self.interrupt:
                    status, error = RunStatus.INTERRUPTED, "run interrupted"
                else:
                    status, error = RunStatus.CANCELLED, "run cancelled"
                    rollback = wf.rollback_on_failure
            except Exception as exc:
                log.exception("run %s of %s failed inside the engine", self.run_id, wf.workflow_id)
                status, error = RunStatus.FAILED, f"internal engine error: {describe(exc)}"
                rollback = wf.rollback_on_failure
            if rollback and not self.dry_run:
                failures = await rollback_run(self)
                if status is RunStatus.FAILED:
                    status = RunStatus.ROLLED_BACK if failures == 0 else RunStatus.FAILED
                if failures:
                    error = f"{error}; rollback incomplete: {failures} rollback action(s) failed"
                if self.interrupt:
                    status = RunStatus.INTERRUPTED
            return await self.finish(status, error, started, t0)
        finally:
            self.engine.active_runs.pop(self.run_id, None)

    async def finish(self, status: RunStatus, error: str | None, started: float, t0: float) -> WorkflowResult:
        self.finishing = True   # from here on, cancel() has nothing left to stop
        self.status = status
        completed = failed = skipped = 0
        for sr in self.step_results.values():
            s = sr.status
            if s is _COMPLETED:
                completed += 1
            elif s is _SKIPPED:
                skipped += 1
            elif s is _FAILED:
                failed += 1
        finished = time.time()
        result = WorkflowResult(self.workflow.workflow_id, status, time.perf_counter() - t0, completed, failed,
                                skipped, error, self.context, self.step_results, self.run_id, started, finished,
                                self.dry_run)
        if self.listeners:
            await self.emit(RunFinished(self.run_id, self.workflow.workflow_id, status, started, finished, error,
                                        result))
        return result

    # -- walking steps
    async def run_steps(self, steps: list[WorkflowStep], scope: Scope, parent: str | None = None) -> None:
        prefix = scope.prefix
        for step in steps:
            if step.step_type in LEAF_TYPES:
                await self.run_leaf(step, prefix + step.step_id, parent, scope)
            else:
                await self.run_composite(step, prefix + step.step_id, parent, scope)

    def record(self, path: str, step: WorkflowStep, status: StepStatus, result: Any, error: str | None,
               attempts: int, started: float, finished: float, reason: str | None = None) -> StepResult:
        sr = StepResult(path, status, result, error, attempts, started, finished, step.step_type, step.action,
                        None, reason)
        self.step_results[path] = sr
        if path != step.step_id:
            self.local_ids[step.step_id] = path
        return sr

    async def skip(self, step: WorkflowStep, path: str, parent: str | None, reason: str,
                   result: Any = None) -> None:
        now = time.time()
        self.record(path, step, _SKIPPED, result, None, 0, now, now, reason)
        if self.listeners:
            await self.emit(StepStarted(self.run_id, path, parent, step.step_type, step.action, 0,
                                        self.idempotent(step), "run", now, _EMPTY))
            await self.emit(StepFinished(self.run_id, path, _SKIPPED, 0, now, now, result, None, "run"))

    def idempotent(self, step: WorkflowStep) -> bool:
        spec = self.engine.registry.get(step.action) if step.action else None
        return spec.idempotent if spec is not None else False

    async def fail(self, step: WorkflowStep, path: str, parent: str | None, started: float, attempts: int,
                   error: str, result: Any = None, child_rollback: bool = False, announce: bool = False) -> None:
        """Record a failed step and apply its on_failure policy (raise _Abort, or carry on)."""
        now = time.time()
        policy = step.on_failure
        status = _SKIPPED if policy == "skip" else _FAILED
        self.record(path, step, status, result, error, attempts, started, now,
                    "failed, skipped by on_failure: skip" if policy == "skip" else None)
        if self.listeners:
            if announce:
                await self.emit(StepStarted(self.run_id, path, parent, step.step_type, step.action, 0,
                                            self.idempotent(step), "run", started, _EMPTY))
            await self.emit(StepFinished(self.run_id, path, status, attempts, started, now, result, error, "run"))
        if policy in ("continue", "skip"):
            return
        raise _Abort(path, f"step {path!r} failed: {error}", rollback=policy == "rollback" or child_rollback)

    async def cancelled(self, step: WorkflowStep, path: str, started: float, attempts: int) -> None:
        now = time.time()
        status = _INTERRUPTED if self.interrupt else _CANCELLED
        error = "interrupted" if self.interrupt else "cancelled"
        self.record(path, step, status, None, error, attempts, started, now)
        if self.listeners:
            await asyncio.shield(self.emit(StepFinished(self.run_id, path, status, attempts, started, now, None,
                                                        error, "run")))

    # -- leaf steps (action, notification, script, webhook)
    async def run_leaf(self, step: WorkflowStep, path: str, parent: str | None, scope: Scope) -> None:
        c = step._compiled
        if c is None:
            try:
                c = compiled(step)
            except ExpressionError as exc:
                return await self.fail(step, path, parent, time.time(), 0, str(exc), announce=True)
        spec = self.engine.registry.get(step.action) if step.action else None
        if self.prior is not None:
            prior = self.prior.get(path)
            if prior is not None and await resume_step(self, step, path, parent, scope, prior, spec):
                return
        names = scope.names
        if c.cond is not None:
            try:
                if not evaluate_condition(c.cond, names):
                    return await self.skip(step, path, parent, "condition is false")
            except ExpressionError as exc:
                return await self.fail(step, path, parent, time.time(), 0, f"condition: {exc}", announce=True)
        try:
            params = step.params if c.params is None else c.params.fn(names)
        except ExpressionError as exc:
            return await self.fail(step, path, parent, time.time(), 0, f"params: {exc}", announce=True)
        if spec is None:
            return await self.fail(step, path, parent, time.time(), 0,
                                   f"unknown action {step.action!r}", announce=True)
        await self.attempts(step, path, parent, scope, spec, params)

    async def attempts(self, step: WorkflowStep, path: str, parent: str | None, scope: Scope, spec: Any,
                       params: Mapping[str, Any]) -> None:
        retries = step.max_retries
        if retries is None:
            retries = 3 if step.on_failure == "retry" else 0
        handler = spec.handler
        listeners = self.listeners
        started = time.time()
        attempt = 0
        context = scope.context
        timeout = step.timeout
        deadline = None if step.total_timeout is None else time.monotonic() + step.total_timeout
        while True:
            attempt += 1
            token = None
            try:
                if listeners:
                    await self.emit(StepStarted(self.run_id, path, parent, step.step_type, step.action, attempt,
                                                spec.idempotent, "run", time.time(), params),
                                    strict=not spec.idempotent and not self.dry_run)
                token = _current_step.set((self.run_id, scope.workflow_id, path, attempt,
                                           f"{self.run_id}:{path}", self.detection, self.dry_run, "run", None))
                if self.dry_run:
                    result: Any = {"dry_run": True, "action": step.action, "params": params,
                                   "irreversible": spec.destructive and not step.rollback_action}
                elif deadline is not None:
                    left = max(deadline - time.monotonic(), 0.0)
                    if timeout is not None and timeout < left:
                        left = timeout
                    result = await call_with_timeout(handler, params, context, left)
                elif timeout is None:
                    result = handler(**params, context=context)
                    if result is not None and hasattr(result, "__await__"):
                        result = await result
                else:
                    result = await call_with_timeout(handler, params, context, timeout)
            except asyncio.CancelledError:
                if token is not None:
                    _current_step.reset(token)
                await self.cancelled(step, path, started, attempt)
                raise
            except Exception as exc:  # noqa: BLE001 - any handler failure is the step's failure
                if token is not None:
                    _current_step.reset(token)
                error = describe(exc)
                if deadline is not None and time.monotonic() >= deadline:
                    return await self.fail(step, path, parent, started, attempt,
                                           f"step timed out after {step.total_timeout:g}s "
                                           f"({attempt} attempt(s); last: {error})")
                if attempt > retries or not is_retryable(exc):
                    return await self.fail(step, path, parent, started, attempt, error)
                delay = retry_delay(step, attempt)
                if deadline is not None:
                    delay = min(delay, max(deadline - time.monotonic(), 0.0))
                try:
                    await asyncio.sleep(delay)
                except asyncio.CancelledError:
                    await self.cancelled(step, path, started, attempt)
                    raise
                continue
            _current_step.reset(token)
            break
        finished = time.time()
        self.record(path, step, _COMPLETED, result, None, attempt, started, finished)
        if step.output:
            self.context[step.output] = result
        if step.rollback_action:
            self.undo.append((step, path, params, result, scope))
        if listeners:
            await self.emit(StepFinished(self.run_id, path, _COMPLETED, attempt, started, finished, result, None,
                                         "run"))
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # The handler finished an act it could not abandon (past its commit point) although the run was
            # cancelled meanwhile; its result is recorded above, and the cancellation goes on from here.
            raise asyncio.CancelledError

    # -- composite steps
    async def run_composite(self, step: WorkflowStep, path: str, parent: str | None, scope: Scope) -> None:
        from .composite import run_composite
        await run_composite(self, step, path, parent, scope)


__all__ = ["Run"]
