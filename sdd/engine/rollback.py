"""Rollback: undoing a failed run's completed steps, last first, with each step's `rollback_action`.

Every rollback is recorded as its own StepStarted/StepFinished (phase "rollback"); a failing one does not
stop the rest, and the count of failures decides whether the run ends `rolled_back` or `failed`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .attempt import describe, invoke
from .errors import ExpressionError
from .events import StepFinished, StepStarted
from .journal import EMPTY, RunState
from .specs.compilation import compiled
from .statuses import Phase, StepStatus

_CANCELLED = "rollback cancelled"


async def rollback_run(run: RunState) -> int:
    """Undo completed steps in reverse; every rollback is recorded, a failing one does not stop the rest.
    Returns how many rollbacks failed."""
    failures = 0
    while run.undo:
        step, path, params, result, scope = run.undo.pop()
        started = time.time()
        spec = run.registry.get(step.rollback_action) if step.rollback_action else None
        c = compiled(step)
        error: str | None = None
        rparams: Any = params
        try:
            if c.rollback_params is not None:
                rparams = c.rollback_params.fn(scope.names)
            elif step.rollback_params is not None:
                rparams = step.rollback_params
        except ExpressionError as exc:
            error = f"rollback params: {exc}"
        if run.listeners:
            await run.emit(StepStarted(run.run_id, path, None, step.step_type, step.rollback_action, 1,
                                       spec.idempotent if spec else False, Phase.ROLLBACK, started,
                                       rparams if error is None else EMPTY, run.labels))
        if error is None and spec is None:
            error = f"unknown rollback action {step.rollback_action!r}"
        if error is None and spec is not None:
            try:
                await invoke(spec.handler, rparams, scope.context, step.timeout,
                             run.step_info(scope, path, 1, Phase.ROLLBACK, result))
            except asyncio.CancelledError:
                error = _CANCELLED
                run.interrupt = True
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
            except Exception as exc:  # noqa: BLE001 - a failing rollback must not stop the others
                error = describe(exc)
        finished = time.time()
        sr = run.step_results.get(path)
        if error is None:
            status = StepStatus.ROLLED_BACK
            if sr is not None:
                sr.status = StepStatus.ROLLED_BACK
        else:
            failures += 1
            status = StepStatus.FAILED
            if sr is not None:
                sr.rollback_error = error
        if run.listeners:
            await run.emit(StepFinished(run.run_id, path, status, 1, started, finished, None, error,
                                        Phase.ROLLBACK, run.labels))
        if run.interrupt and error == _CANCELLED:
            break
    return failures


__all__ = ["rollback_run"]
