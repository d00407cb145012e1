"""The run and step status vocabulary (the contract's strings) shared by the engine, the store and the API."""

from __future__ import annotations

from enum import Enum


class RunStatus(str, Enum):
    """Where a run is. Terminal: completed, failed, rolled_back, cancelled, interrupted."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value

    @property
    def terminal(self) -> bool:
        return self not in (RunStatus.PENDING, RunStatus.RUNNING)


class StepStatus(str, Enum):
    """Where a step is. `interrupted`: outcome unknown after a crash; `cancelled`: stopped because the run
    was cancelled or a parallel sibling failed."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    ROLLED_BACK = "rolled_back"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


__all__ = ["RunStatus", "StepStatus"]
