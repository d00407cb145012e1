"""The history recorder: the engine listener that turns engine events into durable rows.

For a step whose action is NOT idempotent the recorder writes an intent record (status `running`, its
attempt and params) and hands the engine an awaitable that resolves only once that intent is committed, so
after a kill -9 the step is found "in flight" rather than silently run twice; its outcome is written after.

Every other step (idempotent actions, composite steps, dry runs, and steps announced with attempt 0 because
they are skipped or fail before acting) needs no intent on disk: after a crash an idempotent step found
without a row is simply run again, which is what an intent without an outcome would have led to. So its
intent is held in memory and written together with its outcome as ONE row (one store write instead of two,
the hot path of a burst). Only a step still in flight `_INTENT_DELAY` seconds after it started gets its
`running` row written on its own, so API readers still see long-running steps as running.

The same holds one level up for runs started by a detection: such a run's row is held in memory with its
steps' rows and written whole, already final, with its outcome (one store write instead of three). Its row
goes out on its own (`running`) first when one of its steps needs a committed intent, or once it has run
`_INTENT_DELAY` seconds. A crash while it is held leaves no row, and its detection still `queued` (the
dispatcher marks a detection `matched` only from `on_run_recorded`, called once the run's row is enqueued), so
the detection is dispatched again at start-up: exactly what resuming a run of idempotent steps would do.
Runs started from the API or a schedule, and resumed runs, are written at once. Outcomes and run
starts are enqueued without waiting (in order with every other write: anything enqueued before an awaited
intent is committed with or before it). A run's final status is awaited, so when `handle.wait()` returns the
run is recorded complete.

`prior_steps(run_id)` reads the recorded steps back as the engine's `PriorStep`s for crash recovery.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sdd.engine import PriorStep, StepStatus
from sdd.engine.events import EngineEvent, RunFinished, RunStarted, StepFinished, StepStarted, StepWaiting
from sdd.labels import DETECTION_ID, TRIGGER, Trigger, label_uid
from sdd.store import Store, StoreError
from sdd.store.codec import RawJSON
from sdd.store.writer import Operation
from sdd.store.writes import (
    create_run_op,
    finish_run_op,
    record_finished_run_op,
    record_step_finished_op,
    record_step_op,
    record_step_started_op,
    record_step_waiting_op,
)

log = logging.getLogger("sdd.history")

# How long a step whose intent need not be committed before it acts may run before its `running` row is
# written anyway (for API readers); quicker steps get one row, written with their outcome.
_INTENT_DELAY = 0.25


@dataclass(slots=True)
class _HeldRun:
    """A run whose row is not written yet, and the rows of its finished steps, to be written after it."""

    event: RunStarted
    detection_id: str | None
    trigger: str
    uid: int | None
    steps: list[Operation] = field(default_factory=list)


class HistoryRecorder:
    """`engine = WorkflowEngine(listeners=[HistoryRecorder(store)])`. The store's detection id, the trigger
    and the uid of a run come from its labels (`sdd.labels`, attached by `engine.start(labels=...)`); a run
    without labels is recorded without a detection id, triggered by a detection if it was given one.
    `on_run_recorded(run_id, detection_id)` is called right after a run's row is enqueued (anything the
    caller enqueues from it is committed with or after that row)."""

    def __init__(self, store: Store, *, snapshot_cache_size: int = 64,
                 on_run_recorded: Callable[[str, str | None], None] | None = None):
        self.store = store
        self.on_run_recorded = on_run_recorded
        self._held_runs: dict[str, _HeldRun] = {}
        self._dry_runs: set[str] = set()  # their steps act on nothing: no intent needs waiting for
        self._snapshots: dict[int, tuple[Any, RawJSON | None]] = {}
        self._snapshot_cache_size = snapshot_cache_size
        # Intents not written yet, per run: (phase, step path) → the StepStarted event.
        self._held: dict[str, dict[tuple[str, str], StepStarted]] = {}
        self._flush_timer: asyncio.TimerHandle | None = None

    def __call__(self, event: EngineEvent) -> Awaitable[Any] | None:
        try:
            return self._record(event)
        except StoreError as exc:
            # The engine goes on either way; say once, plainly, which record is missing and why.
            log.error("history: cannot record %s of run %s: %s", type(event).__name__,
                      getattr(event, "run_id", "?"), exc)
            return None

    def _record(self, event: EngineEvent) -> Awaitable[Any] | None:
        if type(event) is StepStarted:  # the event classes are final: exact types, checked most frequent first
            return self._step_started(event)
        if isinstance(event, StepStarted):
            return self._step_started(event)
        if isinstance(event, StepFinished):
            held = self._held.get(event.run_id)
            started = None if held is None else held.pop((event.phase, event.step_id), None)
            if started is None:
                op = record_step_finished_op(event.run_id, event.step_id, event.status, event.phase,
                                             event.attempts, event.started_at, event.finished_at, event.result,
                                             event.error)
            else:  # intent and outcome in one row
                op = record_step_op(event.run_id, event.step_id, event.status, event.phase, started.parent_id,
                                    started.step_type, started.action, started.idempotent, started.params,
                                    max(event.attempts or 0, started.attempt or 0), event.started_at,
                                    event.finished_at, event.result, event.error)
            run = self._held_runs.get(event.run_id)
            if run is not None:
                run.steps.append(op)
            else:
                self.store.submit(op)
            return None
        if isinstance(event, RunStarted):
            self._run_started(event)
            return None
        if isinstance(event, RunFinished):
            return self._run_finished(event)
        if isinstance(event, StepWaiting):
            return self._step_waiting(event)
        return None

    def _step_waiting(self, event: StepWaiting) -> Awaitable[Any]:
        """A step a guard holds: its run's row and its intent go out now, then `waiting` (awaited, so the wait
        is on disk before the step joins the line: after a crash, recovery puts it back in line)."""
        held = self._held.get(event.run_id)
        started = None if held is None else held.pop((event.phase, event.step_id), None)
        if started is not None:
            self._write_intent(started)  # (releases a held run first)
        elif event.run_id in self._held_runs:
            self._release_run(event.run_id)
        return self.store.write(record_step_waiting_op(event.run_id, event.step_id, event.phase, event.reason,
                                                       event.since))

    def prior_steps(self, run_id: str) -> dict[str, PriorStep]:
        """The recorded run-phase steps of `run_id` as the engine's `PriorStep`s (for `engine.start(prior=)`)."""
        return prior_steps(self.store, run_id)

    # --- events -----------------------------------------------------------------------------------------------
    def _step_started(self, event: StepStarted) -> Awaitable[Any] | None:
        # attempt 0 announces a step that is skipped or failed before acting: nothing is about to happen.
        if (event.idempotent or event.attempt == 0 or event.step_type not in _ACTING_TYPES
                or event.run_id in self._dry_runs):
            held = self._held.get(event.run_id)
            if held is None:
                held = self._held[event.run_id] = {}
            held[(event.phase, event.step_id)] = event  # a retry replaces its earlier attempt
            if self._flush_timer is None:
                self._arm_flush()
            return None
        held = self._held.get(event.run_id)
        if held:
            held.pop((event.phase, event.step_id), None)
        try:
            if event.run_id in self._held_runs:
                self._release_run(event.run_id)
            return self.store.write(record_step_started_op(
                event.run_id, event.step_id, event.phase, event.parent_id, event.step_type, event.action,
                event.attempt, event.idempotent, event.started_at, event.params))
        except StoreError as exc:
            # No intent can go on disk, so the side effect must not happen: the engine, awaiting this, fails
            # the attempt (retryably) before acting.
            return _failed(exc)

    def _arm_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to time it on: write the held intents now
            self._flush(0.0)
            return
        self._flush_timer = loop.call_later(_INTENT_DELAY, self._flush, _INTENT_DELAY)

    def _flush(self, age: float) -> None:
        """Writes the `running` row of held steps that started more than `age` seconds ago."""
        self._flush_timer = None
        cutoff = time.time() - age
        for run_id in [r for r, run in self._held_runs.items() if run.event.started_at <= cutoff]:
            self._release_run(run_id)
        for run_id in list(self._held):
            held = self._held[run_id]
            for key in [k for k, ev in held.items() if ev.started_at is None or ev.started_at <= cutoff]:
                self._write_intent(held.pop(key))
            if not held:
                del self._held[run_id]
        if self._held or self._held_runs:
            self._arm_flush()

    def _write_intent(self, event: StepStarted) -> None:
        if event.run_id in self._held_runs:
            self._release_run(event.run_id)
        try:
            self.store.submit(record_step_started_op(
                event.run_id, event.step_id, event.phase, event.parent_id, event.step_type, event.action,
                event.attempt, event.idempotent, event.started_at, event.params))
        except StoreError as exc:
            log.error("history: cannot record StepStarted of run %s: %s", event.run_id, exc)

    def _run_started(self, event: RunStarted) -> None:
        if event.dry_run:
            self._dry_runs.add(event.run_id)
        labels = event.labels
        detection_id = labels.get(DETECTION_ID)
        trigger = labels.get(TRIGGER) or (Trigger.DETECTION if event.detection_id is not None else Trigger.API)
        uid = label_uid(labels)
        if trigger == Trigger.DETECTION and not event.resumed:
            self._held_runs[event.run_id] = _HeldRun(event, detection_id, trigger, uid)
            if self._flush_timer is None:
                self._arm_flush()
            return
        self._write_run(event, detection_id, trigger, uid)

    def _release_run(self, run_id: str) -> None:
        """Writes a held run's `running` row and its finished steps' rows now (its rows must precede theirs)."""
        run = self._held_runs.pop(run_id)
        try:  # (also called from the flush timer, where nobody would catch it)
            self._write_run(run.event, run.detection_id, run.trigger, run.uid)
            for op in run.steps:
                self.store.submit(op)
        except StoreError as exc:
            log.error("history: cannot record run %s: %s", run_id, exc)

    def _write_run(self, event: RunStarted, detection_id: str | None, trigger: str, uid: int | None) -> None:
        try:
            snapshot = self._snapshot(event.workflow)
            try:
                op = create_run_op(event.run_id, event.workflow_id, detection_id, dict(event.context), snapshot,
                                   "running", trigger, event.started_at, event.dry_run, uid, event.resumed)
            except StoreError as exc:  # record the run even when its snapshot cannot be stored
                log.error("run %s: storing without its workflow snapshot: %s", event.run_id, exc)
                op = create_run_op(event.run_id, event.workflow_id, detection_id, None, None, "running", trigger,
                                   event.started_at, event.dry_run, uid, event.resumed)
            self.store.submit(op)
        finally:
            self._recorded(event.run_id, detection_id)

    def _recorded(self, run_id: str, detection_id: str | None) -> None:
        if self.on_run_recorded is not None:
            try:
                self.on_run_recorded(run_id, detection_id)
            except Exception:  # the caller's bug must not lose the history
                log.exception("on_run_recorded failed for run %s", run_id)

    def _run_finished(self, event: RunFinished) -> Awaitable[Any]:
        result = event.result
        summary = None
        if result is not None:
            summary = {"steps_completed": result.steps_completed, "steps_failed": result.steps_failed,
                       "steps_skipped": result.steps_skipped, "execution_time": result.execution_time,
                       "context": result.context}
        self._dry_runs.discard(event.run_id)
        held = self._held.pop(event.run_id, None)
        if held:  # a step that never reported its outcome stays visible as it was left: running
            for started in held.values():
                self._write_intent(started)  # (releases a held run first)
        run = self._held_runs.pop(event.run_id, None)
        if run is not None:
            return self._write_whole_run(run, event, summary)
        return self.store.write(finish_run_op(event.run_id, event.status, event.error, event.finished_at, summary))

    def _write_whole_run(self, run: _HeldRun, event: RunFinished, summary: dict[str, Any] | None) -> Awaitable[Any]:
        started = run.event
        try:
            op = record_finished_run_op(
                started.run_id, started.workflow_id, run.detection_id, dict(started.context),
                self._snapshot(started.workflow), run.trigger, started.started_at, started.dry_run, run.uid,
                run.steps, event.status, event.error, event.finished_at, summary)
        except StoreError as exc:  # a value the store refuses: the separate writes name it and keep the rest
            log.error("run %s: cannot record it in one write: %s", started.run_id, exc)
            self._held_runs[started.run_id] = run
            self._release_run(started.run_id)
            return self.store.write(finish_run_op(event.run_id, event.status, event.error, event.finished_at,
                                                  summary))
        try:
            return self.store.write(op)
        finally:
            self._recorded(started.run_id, run.detection_id)

    # --- helpers ----------------------------------------------------------------------------------------------
    def _snapshot(self, workflow: Any) -> RawJSON | None:
        """The workflow as JSON, encoded once per workflow object (a burst of runs shares one workflow)."""
        key = id(workflow)
        cached = self._snapshots.get(key)
        if cached is not None and cached[0] is workflow:
            return cached[1]
        try:
            snap: RawJSON | None = RawJSON(json.dumps(workflow.to_dict(), ensure_ascii=True, separators=(",", ":")))
        except (TypeError, ValueError, RecursionError, AttributeError) as exc:
            log.error("workflow %s: snapshot not serialisable: %s", getattr(workflow, "workflow_id", "?"), exc)
            snap = None
        if len(self._snapshots) >= self._snapshot_cache_size:
            self._snapshots.pop(next(iter(self._snapshots)))
        self._snapshots[key] = (workflow, snap)
        return snap


async def _failed(exc: BaseException) -> Any:
    raise exc


# Step types that run a handler with side effects; composite steps (loop, parallel, branch, workflow,
# condition) only organise their children, whose own intents are what matters.
_ACTING_TYPES = frozenset({"action", "notification", "script", "webhook"})


def prior_steps(store: Store, run_id: str) -> dict[str, PriorStep]:
    """The run-phase steps recorded for `run_id`, keyed by step path, as the engine's `PriorStep`s."""
    prior: dict[str, PriorStep] = {}
    for step in store.steps_of(run_id):
        if step["phase"] != "run":
            continue
        try:
            status: StepStatus | str = StepStatus(step["status"])
        except ValueError:
            status = step["status"]
        prior[step["step_id"]] = PriorStep(status=status, result=step["result"], attempts=step["attempts"],
                                           error=step["error"])
    return prior


__all__ = ["HistoryRecorder", "prior_steps"]
