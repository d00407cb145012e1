"""Resuming a run after a restart: applying a step's recorded outcome (`prior`) instead of running it again.

Completed and skipped steps are reused; a step whose intent was recorded but not its outcome is re-run
only when its action is idempotent or the workflow says `on_interrupt: retry`; otherwise it is recorded as
interrupted and the run stops (rolled back with `on_interrupt: rollback`) rather than repeat a side effect
that may already have happened.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .events import StepFinished
from .flow import _Abort
from .model import WorkflowStep
from .results import PriorStep
from .scope import Scope
from .statuses import RunStatus, StepStatus

if TYPE_CHECKING:
    from .runner import Run

_REUSABLE = frozenset({"completed", "skipped", "rolled_back"})


async def resume_step(run: Run, step: WorkflowStep, path: str, parent: str | None, scope: Scope,
                      prior: PriorStep, spec: Any) -> bool:
    """Apply a recorded outcome; True when the step needs no (re)run."""
    status = str(prior.status.value if isinstance(prior.status, StepStatus) else prior.status)
    now = time.time()
    if status in _REUSABLE:
        st = StepStatus.SKIPPED if status == "skipped" else StepStatus.COMPLETED
        run.record(path, step, st, prior.result, prior.error, prior.attempts, now, now, "resumed")
        if st is StepStatus.COMPLETED:
            if step.output:
                run.context[step.output] = prior.result
            if step.rollback_action:
                run.undo.append((step, path, step.params, prior.result, scope))
        return True
    if status == "failed":
        await run.fail(step, path, parent, now, prior.attempts, prior.error or "failed before the restart")
        return True
    if status == "pending":
        return False
    # running / interrupted / cancelled: the intent was recorded, the outcome was not.
    if spec is not None and spec.idempotent:
        return False
    mode = run.workflow.on_interrupt
    if mode == "retry":
        return False
    error = "interrupted: the action may or may not have run (not idempotent)"
    run.record(path, step, StepStatus.INTERRUPTED, None, error, prior.attempts, now, now)
    if run.listeners:
        await run.emit(StepFinished(run.run_id, path, StepStatus.INTERRUPTED, prior.attempts, now, now, None,
                                    error, "run"))
    if mode == "rollback":
        raise _Abort(path, f"step {path!r} {error}", rollback=True, status=RunStatus.ROLLED_BACK)
    raise _Abort(path, f"step {path!r} {error}", status=RunStatus.INTERRUPTED)


__all__ = ["resume_step"]
