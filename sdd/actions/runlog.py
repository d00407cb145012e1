"""`RunLog`: an engine listener that keeps the step timeline (status, timing, result) of recent runs in
memory, so `generate_report` can describe the run it is part of without a database round-trip."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from sdd.engine.events import RunFinished, RunStarted, StepFinished, StepStarted


class RunLog:
    """Engine listener keeping the step timeline of the most recent runs in memory (bounded)."""

    def __init__(self, max_runs: int = 64, max_steps: int = 2000) -> None:
        self.runs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.max_runs = max_runs
        self.max_steps = max_steps

    def __call__(self, event: Any) -> None:
        if isinstance(event, RunStarted):
            self.runs[event.run_id] = {"run_id": event.run_id, "workflow_id": event.workflow_id,
                                       "detection_id": event.detection_id, "started_at": event.started_at,
                                       "status": "running", "steps": {}}
            while len(self.runs) > self.max_runs:
                self.runs.popitem(last=False)
            return
        run = self.runs.get(getattr(event, "run_id", None) or "")
        if run is None:
            return
        if isinstance(event, StepStarted):
            key = f"{event.phase}:{event.step_id}"
            if key in run["steps"]:  # a retry: keep the first attempt's start
                run["steps"][key].update(status="running", attempts=event.attempt)
            elif len(run["steps"]) < self.max_steps:
                run["steps"][key] = {"step_id": event.step_id, "phase": event.phase, "action": event.action,
                                     "step_type": event.step_type, "status": "running",
                                     "started_at": event.started_at, "finished_at": None,
                                     "attempts": event.attempt, "result": None, "error": None}
        elif isinstance(event, StepFinished):
            step = run["steps"].get(f"{event.phase}:{event.step_id}")
            if step is not None:
                step.update(status=str(event.status.value if hasattr(event.status, "value") else event.status),
                            finished_at=event.finished_at, attempts=event.attempts, result=event.result,
                            error=event.error)
        elif isinstance(event, RunFinished):
            run["status"] = str(event.status.value if hasattr(event.status, "value") else event.status)
            run["finished_at"] = event.finished_at

    def get(self, run_id: str) -> dict[str, Any] | None:
        run = self.runs.get(run_id)
        if run is None:
            return None
        return {**run, "steps": list(run["steps"].values())}
