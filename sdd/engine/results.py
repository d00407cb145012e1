"""What a run gives back: `WorkflowResult` with one `StepResult` per step path, and `PriorStep`, a step's
recorded outcome handed back to the engine to resume a run after a crash. All round-trip through dicts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .statuses import RunStatus, StepStatus

NO_LABELS: Mapping[str, str] = MappingProxyType({})   # the labels of a run started without any


@dataclass(slots=True)
class StepResult:
    step_id: str                    # the step's path
    status: StepStatus
    result: Any = None
    error: str | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    step_type: str = "action"
    action: str | None = None
    rollback_error: str | None = None
    reason: str | None = None       # why it was skipped / what a dry run would do

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        return {"step_id": self.step_id, "status": self.status.value, "result": self.result,
                "error": self.error, "attempts": self.attempts, "started_at": self.started_at,
                "finished_at": self.finished_at, "step_type": self.step_type, "action": self.action,
                "rollback_error": self.rollback_error, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StepResult:
        return cls(step_id=d["step_id"], status=StepStatus(d["status"]), result=d.get("result"),
                   error=d.get("error"), attempts=int(d.get("attempts", 0)), started_at=d.get("started_at"),
                   finished_at=d.get("finished_at"), step_type=d.get("step_type", "action"),
                   action=d.get("action"), rollback_error=d.get("rollback_error"), reason=d.get("reason"))


@dataclass
class WorkflowResult:
    workflow_id: str
    status: RunStatus
    execution_time: float = 0.0
    steps_completed: int = 0
    steps_failed: int = 0
    steps_skipped: int = 0
    error: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    step_results: dict[str, StepResult] = field(default_factory=dict)
    run_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    dry_run: bool = False
    labels: Mapping[str, str] = field(default_factory=lambda: NO_LABELS)   # the run's, as started

    def to_dict(self) -> dict[str, Any]:
        return {"workflow_id": self.workflow_id, "run_id": self.run_id, "status": self.status.value,
                "execution_time": self.execution_time, "steps_completed": self.steps_completed,
                "steps_failed": self.steps_failed, "steps_skipped": self.steps_skipped, "error": self.error,
                "context": self.context, "started_at": self.started_at, "finished_at": self.finished_at,
                "dry_run": self.dry_run,
                "step_results": {k: v.to_dict() for k, v in self.step_results.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WorkflowResult:
        raw = d.get("step_results") or {}
        items = raw.values() if isinstance(raw, Mapping) else raw
        steps = [StepResult.from_dict(s) for s in items]
        return cls(workflow_id=d["workflow_id"], status=RunStatus(d["status"]),
                   execution_time=float(d.get("execution_time", 0.0)),
                   steps_completed=int(d.get("steps_completed", 0)), steps_failed=int(d.get("steps_failed", 0)),
                   steps_skipped=int(d.get("steps_skipped", 0)), error=d.get("error"),
                   context=dict(d.get("context") or {}), step_results={s.step_id: s for s in steps},
                   run_id=d.get("run_id"), started_at=d.get("started_at"), finished_at=d.get("finished_at"),
                   dry_run=bool(d.get("dry_run", False)))


@dataclass(frozen=True)
class PriorStep:
    """A step's recorded state from an earlier, interrupted execution of the same run."""

    status: StepStatus | str
    result: Any = None
    attempts: int = 0
    error: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PriorStep:
        return cls(status=d["status"], result=d.get("result"), attempts=int(d.get("attempts", 0)),
                   error=d.get("error"))
