"""How a workflow *runs*: one `Run` per execution, a tree walk over the steps on one asyncio task.

Sequential steps are awaited directly (no task per step); only `parallel` children and concurrent loop
items get tasks. Failure policy (`on_failure`), retries, timeouts and cancellation are decided here; the
walk's helpers live beside it: what it has recorded and the events (`journal.py`), composite steps
(`composite.py`), resume from `prior` (`resume.py`), rollback (`rollback.py`), the one handler call and
its retry delay (`attempt.py`), the rules every walk shares (`semantics.py`), the names expressions see
(`scope.py`) and the signals that unwind the walk (`flow.py`). A dry run walks nothing: it is the plan
(`plan.py`), reported with the events of a run. What a step *does* is its action's business.

Cancellation of a step is delivered to its handler as `asyncio.CancelledError`; a handler that started a
subprocess must kill it when it sees that (the built-in actions do).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from .attempt import describe, invoke, retry_delay
from .composite import run_composite
from .errors import ExpressionError, is_retryable
from .events import RunFinished, RunStarted, StepFinished, StepStarted
from .flow import _Abort, _Halt
from .journal import EMPTY, RunState
from .plan import Planner
from .results import StepResult, WorkflowResult
from .resume import resume_step
from .rollback import rollback_run
from .scope import Scope
from .semantics import condition_holds, render_params
from .specs.compilation import compiled
from .specs.model import WorkflowStep
from .specs.vocabulary import LEAF_TYPES
from .statuses import Phase, RunStatus, StepStatus

log = logging.getLogger(__name__)

_COMPLETED, _FAILED, _SKIPPED = StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED
_RUN = Phase.RUN


class Run(RunState):
    """One execution of a workflow: walks its steps, records each one's result and emits the events."""

    # -- entry point
    async def main(self) -> WorkflowResult:
        wf = self.workflow
        started = time.time()
        t0 = time.perf_counter()
        self.started = True
        self.status = RunStatus.RUNNING
        if self.listeners:
            await self.emit(RunStarted(self.run_id, wf.workflow_id, self.detection.get("id"), started,
                                       self.dry_run, self.prior is not None, wf, self.context, self.labels))
        if self.dry_run:
            return await self.rehearse(started, t0)
        scope = Scope({"context": self.context, "detection": self.detection, "steps": self.steps_view()},
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
        if rollback:
            failures = await rollback_run(self)
            if status is RunStatus.FAILED:
                status = RunStatus.ROLLED_BACK if failures == 0 else RunStatus.FAILED
            if failures:
                error = f"{error}; rollback incomplete: {failures} rollback action(s) failed"
            if self.interrupt:
                status = RunStatus.INTERRUPTED
        return await self.finish(status, error, started, t0)

    async def rehearse(self, started: float, t0: float) -> WorkflowResult:
        """A dry run: the plan (what each step would do, nothing run), reported as the run's step results and
        events. It completes whatever the plan says: a step that would fail is a finding, not a failure."""
        planner = Planner(self.env, self.detection)
        planner.plan(self.workflow, dict(self.context))   # the plan marks outputs it cannot know in its copy
        for entry in planner.out:
            now = time.time()
            would_run = entry["would_run"] is True
            step_id = entry["step_id"]
            result = {"dry_run": True, "would_run": entry["would_run"], "reason": entry["reason"],
                      "action": entry["action"], "params": entry["params"], "irreversible": entry["irreversible"]}
            status = _COMPLETED if would_run else _SKIPPED
            self.step_results[step_id] = StepResult(step_id, status, result, None, int(would_run), now, now,
                                                    entry["step_type"], entry["action"], None, entry["reason"])
            if self.listeners:
                await self.emit(StepStarted(self.run_id, step_id, entry["parent_id"], entry["step_type"],
                                            entry["action"], int(would_run), entry["idempotent"], _RUN, now,
                                            entry["params"] if isinstance(entry["params"], Mapping) else EMPTY,
                                            self.labels))
                await self.emit(StepFinished(self.run_id, step_id, status, int(would_run), now, now, result, None,
                                             _RUN, self.labels))
        return await self.finish(RunStatus.COMPLETED, None, started, t0)

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
                                self.dry_run, self.labels)
        if self.listeners:
            await self.emit(RunFinished(self.run_id, self.workflow.workflow_id, status, started, finished, error,
                                        result, self.labels))
        return result

    # -- walking steps
    async def run_steps(self, steps: list[WorkflowStep], scope: Scope, parent: str | None = None) -> None:
        """Run `steps` in order. A leaf step (action, notification, script, webhook) is run right here, its
        attempts included: each coroutine frame between the walk and the handler costs on every step, and
        a step is the hot path. Composite steps are `composite.py`'s."""
        prefix = scope.prefix
        for step in steps:
            path = prefix + step.step_id
            if step.step_type not in LEAF_TYPES:
                await run_composite(self, step, path, parent, scope)
                continue
            c = step._compiled
            if c is None:
                try:
                    c = compiled(step)
                except ExpressionError as exc:
                    await self.fail(step, path, parent, time.time(), 0, str(exc), announce=True)
                    continue
            spec = self.registry.get(step.action) if step.action else None
            if self.prior is not None:
                prior = self.prior.get(path)
                if prior is not None and await resume_step(self, step, path, parent, scope, prior, spec):
                    continue
            names = scope.names
            # The `is not None` tests only save a call on the hot path; the rules are the helpers'.
            if c.cond is not None:
                try:
                    holds = condition_holds(c.cond, names)
                except ExpressionError as exc:
                    await self.fail(step, path, parent, time.time(), 0, f"condition: {exc}", announce=True)
                    continue
                if not holds:
                    await self.skip(step, path, parent, "condition is false")
                    continue
            params: Mapping[str, Any] = step.params
            if c.params is not None:
                try:
                    params = render_params(step, c, names)
                except ExpressionError as exc:
                    await self.fail(step, path, parent, time.time(), 0, f"params: {exc}", announce=True)
                    continue
            if spec is None:
                await self.fail(step, path, parent, time.time(), 0, f"unknown action {step.action!r}",
                                announce=True)
                continue
            handler, idempotent, timeout = spec.handler, spec.idempotent, step.timeout
            deadline = None if step.total_timeout is None else time.monotonic() + step.total_timeout
            started = time.time()
            attempt = 0
            while True:
                attempt += 1
                try:
                    if self.listeners:
                        await self.emit(StepStarted(self.run_id, path, parent, step.step_type, step.action, attempt,
                                                    idempotent, _RUN, time.time(), params, self.labels),
                                        strict=not idempotent)
                    limit = timeout
                    if deadline is not None:
                        left = max(deadline - time.monotonic(), 0.0)
                        limit = left if timeout is None or left < timeout else timeout
                    result = await invoke(handler, params, scope.context, limit,
                                          self.step_info(scope, path, attempt))
                except asyncio.CancelledError:
                    await self.cancelled(step, path, started, attempt)
                    raise
                except Exception as exc:  # noqa: BLE001 - any handler failure is the step's failure
                    failure: str | None = describe(exc)
                    if deadline is not None and time.monotonic() >= deadline:
                        failure = (f"step timed out after {step.total_timeout:g}s ({attempt} attempt(s); "
                                   f"last: {failure})")
                        break
                    if attempt > step.effective_retries or not is_retryable(exc):
                        break
                    delay = retry_delay(step, attempt)
                    if deadline is not None:
                        delay = min(delay, max(deadline - time.monotonic(), 0.0))
                    try:
                        await asyncio.sleep(delay)
                    except asyncio.CancelledError:
                        await self.cancelled(step, path, started, attempt)
                        raise
                    continue
                failure = None
                break
            if failure is not None:
                await self.fail(step, path, parent, started, attempt, failure)
                continue
            finished = time.time()
            self.record(path, step, _COMPLETED, result, None, attempt, started, finished)
            if step.output:
                self.context[step.output] = result
            if step.rollback_action:
                self.undo.append((step, path, params, result, scope))
            if self.listeners:
                await self.emit(StepFinished(self.run_id, path, _COMPLETED, attempt, started, finished, result,
                                             None, _RUN, self.labels))
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # The handler finished an act it could not abandon (past its commit point) although the run was
                # cancelled meanwhile; its result is recorded above, and the cancellation goes on from here.
                raise asyncio.CancelledError


__all__ = ["Run"]
