"""The run and step status vocabulary (the contract's strings) shared by the engine, the store and the API,
and the phase a step event belongs to. Each list of statuses is defined here once."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """Where a run is. Terminal: completed, failed, rolled_back, cancelled, interrupted."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_RUN_STATUSES


class StepStatus(StrEnum):
    """Where a step is. `interrupted`: outcome unknown after a crash; `cancelled`: stopped because the run
    was cancelled or a parallel sibling failed; `waiting`: held by a guard (a rate limit) before it acts,
    bounded by its timeout."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    ROLLED_BACK = "rolled_back"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"


class Phase(StrEnum):
    """Which part of a run a step event belongs to: running the step, or undoing it."""

    RUN = "run"
    ROLLBACK = "rollback"


TERMINAL_RUN_STATUSES: frozenset[RunStatus] = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.ROLLED_BACK, RunStatus.CANCELLED, RunStatus.INTERRUPTED})
# A resumed run takes a step recorded in one of these as done, and does not run it again.
REUSED_ON_RESUME: frozenset[StepStatus] = frozenset({StepStatus.COMPLETED, StepStatus.SKIPPED,
                                                     StepStatus.ROLLED_BACK})

__all__ = ["REUSED_ON_RESUME", "TERMINAL_RUN_STATUSES", "Phase", "RunStatus", "StepStatus"]
