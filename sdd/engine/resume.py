"""Resuming a run after a restart: applying a step's recorded outcome (`prior`) instead of running it again.

Completed and skipped steps are reused; a step whose intent was recorded but not its outcome is re-run
only when its action is idempotent or the workflow says `on_interrupt: retry`; otherwise it is recorded as
interrupted and the run stops (rolled back with `on_interrupt: rollback`) rather than repeat a side effect
that may already have happened.
"""

from __future__ import annotations

import time

from .events import StepFinished
from .flow import _Abort
from .journal import RunState
from .registry import ActionSpec
from .results import PriorStep
from .scope import Scope
from .specs.model import WorkflowStep
from .specs.vocabulary import OnInterrupt
from .statuses import REUSED_ON_RESUME, Phase, RunStatus, StepStatus


async def resume_step(run: RunState, step: WorkflowStep, path: str, parent: str | None, scope: Scope,
                      prior: PriorStep, spec: ActionSpec | None) -> bool:
    """Apply a recorded outcome; True when the step needs no (re)run."""
    try:
        status = StepStatus(prior.status)
    except ValueError:
        status = StepStatus.INTERRUPTED   # a status this engine does not know: treat the outcome as unknown
    now = time.time()
    if status in REUSED_ON_RESUME:
        st = StepStatus.SKIPPED if status is StepStatus.SKIPPED else StepStatus.COMPLETED
        run.record(path, step, st, prior.result, prior.error, prior.attempts, now, now, "resumed")
        if st is StepStatus.COMPLETED:
            if step.output:
                run.context[step.output] = prior.result
            if step.rollback_action:
                run.undo.append((step, path, step.params, prior.result, scope))
        return True
    if status is StepStatus.FAILED:
        await run.fail(step, path, parent, now, prior.attempts, prior.error or "failed before the restart")
        return True
    if status is StepStatus.PENDING or status is StepStatus.WAITING:
        return False  # it never acted (a waiting step is held before it acts): run it, back in line
    # running / interrupted / cancelled: the intent was recorded, the outcome was not.
    if spec is not None and spec.idempotent:
        return False
    mode = run.workflow.on_interrupt
    if mode == OnInterrupt.RETRY:
        return False
    error = "interrupted: the action may or may not have run (not idempotent)"
    run.record(path, step, StepStatus.INTERRUPTED, None, error, prior.attempts, now, now)
    if run.listeners:
        await run.emit(StepFinished(run.run_id, path, StepStatus.INTERRUPTED, prior.attempts, now, now, None,
                                    error, Phase.RUN, run.labels))
    if mode == OnInterrupt.ROLLBACK:
        raise _Abort(path, f"step {path!r} {error}", rollback=True, status=RunStatus.ROLLED_BACK)
    raise _Abort(path, f"step {path!r} {error}", status=RunStatus.INTERRUPTED)


__all__ = ["resume_step"]
