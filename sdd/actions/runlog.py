"""`RunLog`: an engine listener that keeps the step timeline (status, timing, result) of the runs in flight and
the last few finished ones in memory, so `generate_report` can describe the run it is part of without a
database round-trip. The daemon feeds it every engine event and labels each run with what the engine does not
know (sdd's detection id, the producer's id)."""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

from sdd.engine.events import RunFinished, RunStarted, StepFinished, StepStarted

# Runs in flight are never dropped below this many (a report step must find its own run); past it the
# oldest go, so a listener nobody reads cannot grow without bound.
_HARD_CAP = 4096


class RunLog:
    """Engine listener keeping the step timeline of the runs in flight and of the `max_runs` last finished."""

    def __init__(self, max_runs: int = 64, max_steps: int = 2000) -> None:
        self.runs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.max_runs = max_runs
        self.max_steps = max_steps
        self._finished: deque[str] = deque()

    def __call__(self, event: Any) -> None:
        if isinstance(event, RunStarted):
            self.runs[event.run_id] = {"run_id": event.run_id, "workflow_id": event.workflow_id,
                                       "detection_id": None, "external_id": _text(event.detection_id),
                                       "started_at": event.started_at, "status": "running", "steps": {}}
            self._trim()
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
            self._finished.append(event.run_id)
            self._trim()

    def label(self, run_id: str, *, detection_id: str | None = None, external_id: str | None = None) -> None:
        """What the daemon knows of a run that the engine does not: sdd's detection id, the producer's id."""
        run = self.runs.get(run_id)
        if run is not None:
            run["detection_id"] = detection_id
            if external_id is not None:
                run["external_id"] = external_id

    def labels(self, run_id: str | None) -> dict[str, Any]:
        """The run's workflow, detection and producer ids (for log lines), empty when the run is unknown."""
        run = self.runs.get(run_id or "")
        if run is None:
            return {}
        return {"workflow": run["workflow_id"], "detection": run["detection_id"], "external_id": run["external_id"]}

    def get(self, run_id: str) -> dict[str, Any] | None:
        run = self.runs.get(run_id)
        if run is None:
            return None
        return {**run, "steps": list(run["steps"].values())}

    def _trim(self) -> None:
        while len(self._finished) > self.max_runs:
            self.runs.pop(self._finished.popleft(), None)
        while len(self.runs) > _HARD_CAP:
            run_id, _ = self.runs.popitem(last=False)
            if run_id in self._finished:
                self._finished.remove(run_id)


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    return str(value) if isinstance(value, (str, int)) else None
