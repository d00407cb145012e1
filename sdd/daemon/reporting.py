"""Engine events → the run log, the history, the hub and the story log lines: the daemon's engine listener.

Each event goes to the actions' run log first (a report step reads it; only runs that may reach such a step
feed it), then to the history recorder (awaited when it asks: a non-idempotent step's intent, a run's final
status), then to the hub (API subscribers, D-Bus) and the log. The run's detection ids and trigger are read
off its labels (`sdd/labels.py`). Synchronous unless the recorder returns an awaitable, so most events cost
no coroutine.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sdd import hub as events
from sdd.actions.runlog import RunLog
from sdd.daemon.loading import reads_run_log
from sdd.engine import Workflow, WorkflowEngine
from sdd.engine.events import EngineEvent, RunFinished, RunStarted, StepFinished, StepStarted, StepWaiting
from sdd.history.recorder import HistoryRecorder
from sdd.hub import EventHub
from sdd.labels import DETECTION_ID, EXTERNAL_ID, TRIGGER
from sdd.logging import LogEvent, story

log = logging.getLogger("sdd.daemon")


class RunReporter:
    def __init__(self, engine: WorkflowEngine, recorder: HistoryRecorder, hub: EventHub, stats: dict[str, int],
                 run_log: RunLog | None, *, slot_freed: Callable[[str], None],
                 run_waiting: Callable[[str, bool], None], run_recording: Callable[[str], None],
                 on_change: Callable[[], None]) -> None:
        self.engine = engine
        self.recorder = recorder
        self.hub = hub
        self.stats = stats
        self.run_log = run_log        # fed the events of runs that read it
        self._slot_freed = slot_freed      # (run id): the run ended, its slot is free
        self._run_waiting = run_waiting    # (run id, waiting): a guard holds one of its steps, or let it go
        self._run_recording = run_recording  # (run id): its steps are done, its final record is being committed
        self._on_change = on_change
        self._logged_runs: set[str] = set()                    # runs whose events go to the run log
        self._reads_log: dict[int, tuple[Workflow, bool]] = {}  # workflow object → reads_run_log() of it

    def __call__(self, ev: EngineEvent) -> Awaitable[None] | None:
        """The run log first (a report step reads it), then history (awaited when it asks: a non-idempotent
        step's intent, a run's final status), then the hub and the log. Synchronous unless the recorder
        returns an awaitable, so most events cost no coroutine."""
        if self.run_log is not None and (ev.run_id in self._logged_runs or type(ev) is RunStarted):
            self._feed_run_log(self.run_log, ev)
        pending = self.recorder(ev)
        if pending is not None and inspect.isawaitable(pending):
            if type(ev) is RunFinished:
                self._run_recording(ev.run_id)
            return self._publish_after(pending, ev)
        self._publish_engine_event(ev)
        return None

    def _feed_run_log(self, run_log: RunLog, ev: EngineEvent) -> None:
        if isinstance(ev, RunStarted):
            key = id(ev.workflow)
            cached = self._reads_log.get(key)
            if cached is None or cached[0] is not ev.workflow:
                if len(self._reads_log) > 256:
                    self._reads_log.clear()
                cached = self._reads_log[key] = (ev.workflow, reads_run_log(ev.workflow, self.engine.workflows))
            if not cached[1]:
                return
            self._logged_runs.add(ev.run_id)
            run_log(ev)
            run_log.label(ev.run_id, detection_id=ev.labels.get(DETECTION_ID), external_id=ev.labels.get(EXTERNAL_ID))
            return
        run_log(ev)
        if isinstance(ev, RunFinished):
            self._logged_runs.discard(ev.run_id)

    def labels_of(self, run_id: str) -> dict[str, Any]:
        """What the actions' log lines say of a run: sdd's detection id and the producer's."""
        handle = self.engine.active_runs.get(run_id)
        if handle is None:
            return {}
        return {"detection": handle.labels.get(DETECTION_ID), "external_id": handle.labels.get(EXTERNAL_ID)}

    async def _publish_after(self, pending: Awaitable[Any], ev: EngineEvent) -> None:
        try:
            await pending
        except BaseException:
            # Not announced (its record is not on disk), but over all the same: its slot must not stay taken.
            if type(ev) is RunFinished:
                self._slot_freed(ev.run_id)
            raise
        self._publish_engine_event(ev)

    def _publish_engine_event(self, ev: EngineEvent) -> None:
        publish = self.hub.publish
        if isinstance(ev, StepStarted):
            if ev.attempt >= 2 and ev.phase == "run":
                self._step_retried(ev)
            # attempt 0 announces a step that is skipped or failed before acting: it never started.
            if ev.attempt > 0 and self.hub.wants(events.STEP_STARTED):
                publish(events.STEP_STARTED, {"run_id": ev.run_id, "step_id": ev.step_id, "attempt": ev.attempt})
        elif isinstance(ev, StepFinished):
            if ev.status == "failed" or ev.phase == "rollback":
                self._step_outcome(ev)
            if self.hub.wants(events.STEP_FINISHED):
                publish(events.STEP_FINISHED, {"run_id": ev.run_id, "step_id": ev.step_id, "status": str(ev.status),
                                               "seconds": max(0.0, ev.finished_at - ev.started_at),
                                               "error": ev.error})
        elif isinstance(ev, RunStarted):
            labels = ev.labels
            detection_id, external = labels.get(DETECTION_ID), labels.get(EXTERNAL_ID)
            publish(events.RUN_STARTED, {"run_id": ev.run_id, "workflow_id": ev.workflow_id,
                                         "detection_id": detection_id, "external_id": external})
            if log.isEnabledFor(logging.INFO):
                log.info("run started", extra=story(ev.run_id, ev.workflow_id, detection_id,
                                                    external_id=external or "-", trigger=labels.get(TRIGGER, "api"),
                                                    resumed=ev.resumed))
            self._on_change()
        elif isinstance(ev, RunFinished):
            # Published after the recorder's awaited commit: a subscriber seeing it can trust the history.
            detection_id, external = ev.labels.get(DETECTION_ID), ev.labels.get(EXTERNAL_ID)
            self.stats["runs_finished"] += 1
            seconds = max(0.0, ev.finished_at - ev.started_at)
            publish(events.RUN_FINISHED, {"run_id": ev.run_id, "workflow_id": ev.workflow_id,
                                          "status": str(ev.status), "seconds": seconds, "error": ev.error,
                                          "detection_id": detection_id, "external_id": external})
            level = logging.INFO if ev.status == "completed" else logging.WARNING
            if log.isEnabledFor(level):
                log.log(level, "run finished", extra=story(
                    ev.run_id, ev.workflow_id, detection_id, event=LogEvent.RUN_FINISHED,
                    external_id=external or "-",
                    status=str(ev.status), duration=f"{seconds:.3f}s", **({"error": ev.error} if ev.error else {})))
            # The engine drops the handle when the task ends; a free slot is what the dispatcher waits for.
            asyncio.get_running_loop().call_soon(self._slot_freed, ev.run_id)
            self._on_change()
        elif isinstance(ev, StepWaiting):
            self._step_waiting(ev)

    def _step_waiting(self, ev: StepWaiting) -> None:
        waiting = ev.reason is not None
        # (soon, not now: the step joins the guard's line after this event; its run's slot may go to the next)
        asyncio.get_running_loop().call_soon(self._run_waiting, ev.run_id, waiting)
        if self.hub.wants(events.STEP_WAITING):
            self.hub.publish(events.STEP_WAITING, {"run_id": ev.run_id, "step_id": ev.step_id, "waiting": waiting,
                                                   "reason": ev.reason, "since": ev.since})

    def _run_fields(self, ev: StepStarted | StepFinished, **more: Any) -> dict[str, Any]:
        handle = self.engine.active_runs.get(ev.run_id)  # (a step's events come while its run is active)
        workflow_id = None if handle is None else handle.workflow.workflow_id
        return story(ev.run_id, workflow_id, ev.labels.get(DETECTION_ID), **more)

    def _step_retried(self, ev: StepStarted) -> None:
        if log.isEnabledFor(logging.WARNING):
            log.warning("step retried", extra=self._run_fields(ev, step=ev.step_id, attempt=ev.attempt,
                                                               action=ev.action or "-"))

    def _step_outcome(self, ev: StepFinished) -> None:
        """One line per failed step, and per rollback (done or failed)."""
        if ev.phase == "rollback":
            if ev.status == "failed":
                log.error("rollback failed", extra=self._run_fields(ev, step=ev.step_id, error=ev.error))
            else:
                log.warning("step rolled back", extra=self._run_fields(ev, step=ev.step_id,
                                                                       status=str(ev.status)))
            return
        log.warning("step failed", extra=self._run_fields(ev, event=LogEvent.STEP_FAILED, step=ev.step_id,
                                                          status="failed", attempts=ev.attempts, error=ev.error))


__all__ = ["RunReporter"]
