"""Rollback: undoing a failed run's completed steps, last first, with each step's `rollback_action`.

Every rollback is recorded as its own StepStarted/StepFinished (phase "rollback"); a failing one does not
stop the rest, and the count of failures decides whether the run ends `rolled_back` or `failed`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .attempt import call_with_timeout, describe
from .compilation import compiled
from .errors import ExpressionError
from .events import StepFinished, StepStarted
from .registry import _current_step
from .statuses import StepStatus

if TYPE_CHECKING:
    from .runner import Run

_EMPTY: Mapping[str, Any] = {}


async def rollback_run(run: Run) -> int:
    """Undo completed steps in reverse; every rollback is recorded, a failing one does not stop the rest."""
    failures = 0
    registry = run.engine.registry
    while run.undo:
        step, path, params, result, scope = run.undo.pop()
        started = time.time()
        spec = registry.get(step.rollback_action) if step.rollback_action else None
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
                                       spec.idempotent if spec else False, "rollback", started,
                                       rparams if error is None else _EMPTY))
        if error is None and spec is None:
            error = f"unknown rollback action {step.rollback_action!r}"
        if error is None and spec is not None:
            token = _current_step.set((run.run_id, scope.workflow_id, path, 1, f"{run.run_id}:{path}",
                                       run.detection, run.dry_run, "rollback", result))
            try:
                if step.timeout is None:
                    ret = spec.handler(**rparams, context=scope.context)
                    if ret is not None and hasattr(ret, "__await__"):
                        await ret
                else:
                    await call_with_timeout(spec.handler, rparams, scope.context, step.timeout)
            except asyncio.CancelledError:
                error = "rollback cancelled"
                run.interrupt = True
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - a failing rollback must not stop the others
                error = describe(exc)
            finally:
                _current_step.reset(token)
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
                                        "rollback"))
        if run.interrupt and error == "rollback cancelled":
            break
    return failures


__all__ = ["rollback_run"]
