"""The dispatcher: a detection's way from its arrival to its runs — the one place that commits a detection.

Every detection is committed here, whichever way it came: intake (its own thread) hands over a parsed batch
→ `_commit()` records each detection in the store (state `queued`), queues it, and lets intake delete the
spool files only once that commit is fsync'd; one from the API (`detections.submit`) or pushed over NATS
goes through `submit()`. Both end in `accepted()`: counted, announced on the hub, queued. The dispatch loop takes queued detections while
fewer than `max_concurrent_runs` runs are busy (active, and neither held by a guard nor only waiting for
their record's commit), matches them (triggers, exclusions, de-duplication) and
starts their runs, each labelled (`sdd.labels`) with its detection ids and trigger, which travel with the run
in every engine event; a detection is marked `matched` once the history has enqueued the rows of all its
runs (`run_recorded`). When runs are saturated, detections wait in the database, not in memory: only a
window of `READY_WINDOW` is kept here and the rest is read back with `pending_detections()`, and intake
stops claiming while `intake.max_queued` are waiting.

Its collaborators are handed in, each for what the dispatcher does with it: the store (commit, read back,
mark), the hub (announce), the engine (start runs, count active ones, the workflows to match), the
counters, its settings (replaced on reload through `configure`), and the daemon's life (stopping or not).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from sdd import hub as events
from sdd.config import Config
from sdd.dispatch.matcher import Decision, DedupWindow, Exclusions, MatchResult, match
from sdd.engine import RunHandle, Workflow, WorkflowEngine, WorkflowResult, new_run_id
from sdd.errors import NotAccepting
from sdd.hub import EventHub
from sdd.intake.watch import Claimed, Intake, Rejected
from sdd.labels import Trigger, external_id, run_labels
from sdd.logging import LogEvent, kv, story
from sdd.store import Store
from sdd.store.records import AddedDetection
from sdd.store.writer import Operation
from sdd.store.writes import record_detection_op, record_detections_op, set_detection_state_op

log = logging.getLogger("sdd.daemon")

READY_WINDOW = 1000         # detections the dispatcher keeps in memory; the rest wait in the database
WAITING_RUNS_FACTOR = 4     # runs held by a guard, beyond max_concurrent_runs, at most this x the limit
RECORDING_RUNS_FACTOR = 4   # runs whose steps are done, waiting for their record's commit: likewise
OUTBOUND_RUNS_FACTOR = 16   # runs with a step waiting on a remote party (mail relay, webhook): likewise

Spawn = Callable[[Awaitable[Any], str], Any]


class Lifecycle(Protocol):
    """What the dispatcher needs to know of the daemon's life."""

    @property
    def stopping(self) -> bool: ...

    @property
    def running(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    max_concurrent_runs: int
    dedup_window: float
    max_queued: int

    @classmethod
    def of(cls, config: Config) -> DispatchSettings:
        return cls(config.engine.max_concurrent_runs, config.engine.dedup_window, config.intake.max_queued)


@dataclass(frozen=True, slots=True)
class Started:
    """A run started by request, and the sample detection recorded for it (if it was given one)."""

    handle: RunHandle
    detection_id: str | None


class Dispatcher:
    def __init__(self, store: Store, hub: EventHub, engine: WorkflowEngine, stats: dict[str, int],
                 settings: DispatchSettings, *, life: Lifecycle, spawn: Spawn,
                 on_change: Callable[[], None] | None = None) -> None:
        self.store = store
        self.hub = hub
        self.engine = engine
        self.stats = stats
        self.settings = settings
        self.life = life
        self._spawn = spawn
        self._on_change = on_change
        self._loop = asyncio.get_running_loop()
        self.intake: Intake | None = None   # attached once it exists (it delivers to this dispatcher)
        self.wake = asyncio.Event()    # something to dispatch, or a run slot freed
        self._started_mono = time.monotonic()
        self._ready: deque[tuple[str, dict[str, Any]]] = deque()
        self._ready_ids: set[str] = set()
        self._backlog = True            # there may be queued detections in the database not in _ready
        self.queued = 0                 # detections committed and not yet matched
        self.paused = False
        self.dedup = DedupWindow(settings.dedup_window)
        self._exclusions: Exclusions | None = None
        self._exclusions_version = -1
        self.history_dedup = False      # runs from before this start may still be inside the dedup window
        self._awaiting_start: dict[str, tuple[int, str | None]] = {}  # detection id → (runs to record, note)
        self._recorded_waiters: dict[str, asyncio.Future[None]] = {}  # run id → resolved once its row is queued
        # Dispatched, but the state write not yet committed: the database still says `queued`, so a
        # refill from it must not dispatch them again.
        self._in_progress: set[str] = set()
        # Runs with a step a guard holds (a rate limit's slot): they do not count against max_concurrent_runs
        # (up to a bound), so steps waiting for a kill slot cannot starve new quarantines.
        self.waiting_runs: set[str] = set()
        # Runs whose steps are all done and whose final record is being committed: they act no more, so
        # they do not count either (up to a bound): a commit's latency must not idle the run slots.
        self.recording_runs: set[str] = set()
        # Runs with a step waiting on a remote party (`actions.outbound`), by how many: they act on nothing
        # meanwhile, so they do not count either (up to a bound): a mail relay that never answers must not
        # hold up the quarantine of the next detections for its timeout.
        self.outbound_runs: dict[str, int] = {}
        self.on_detection: Callable[[str, str], None] | None = None  # (source, outcome), for the metrics

    def configure(self, settings: DispatchSettings) -> None:
        """New settings (on reload): the next dispatch uses them."""
        self.settings = settings
        self.dedup.window = settings.dedup_window
        self.wake.set()

    def attach_intake(self, intake: Intake) -> None:
        self.intake = intake
        intake.make_durable = self.store.flush_to_disk  # what `done` names is on disk before the files go
        self.update_pause()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def deliver(self, claimed: list[Claimed], rejected: list[Rejected]) -> None:
        """Called on the intake thread."""
        if not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._on_batch, claimed, rejected)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _on_batch(self, claimed: list[Claimed], rejected: list[Rejected]) -> None:
        for r in rejected:
            if self.on_detection is not None:
                self.on_detection("spool", "rejected")
            self.stats["rejected"] += 1
            self.hub.publish(events.DETECTION_REJECTED, {"name": r.name, "reason": r.reason})
        if claimed:
            self._spawn(self._commit(claimed), "commit")

    async def _commit(self, claimed: list[Claimed]) -> None:
        """Commits an intake batch and queues its detections at once; their spool files go only once the
        commit is also on disk (intake calls `store.flush_to_disk()` before deleting). Their runs may start
        in between:
        nothing they write can outlive the detection (the WAL keeps commit order, so a power loss that took
        the detection takes every later row too), and the file, still in cur/, brings it back at start-up."""
        store, intake = self.store, self.intake
        assert intake is not None
        results: list[AddedDetection | BaseException | None] = [None] * len(claimed)
        ops: list[tuple[int, Operation]] = []
        for i, c in enumerate(claimed):
            try:
                ops.append((i, record_detection_op(c.detection, c.name, None, "queued", None)))
            except Exception as exc:  # noqa: BLE001 -- the store refused the value (checked in this thread)
                results[i] = exc
        if ops:
            # The whole batch as one operation: one future and one wake-up instead of one per detection.
            try:
                added = await store.write(record_detections_op([op for _, op in ops]))
            except Exception:  # noqa: BLE001 -- one of them failed: nothing committed; one write each
                waits: list[Awaitable[Any]] = []
                for _, op in ops:
                    try:
                        waits.append(store.write(op))
                    except Exception as exc:  # noqa: BLE001 -- e.g. the store is closed
                        waits.append(_failed(exc))
                added = await asyncio.gather(*waits, return_exceptions=True)
            for (i, _), res in zip(ops, added):
                results[i] = res
        done: list[str] = []
        failed: list[str] = []
        failure: BaseException | None = None
        refused: list[tuple[str, str]] = []
        for c, res in zip(claimed, results):
            if isinstance(res, BaseException):
                if isinstance(res, ValueError):
                    refused.append((c.name, f"refused by the database: {res}"))
                else:  # the database is failing: the file stays in cur/, delivered again (intake.release)
                    failed.append(c.name)
                    failure = res
                continue
            assert res is not None
            done.append(c.name)
            try:
                self.accepted(res, c.detection)
            except Exception:  # committed: the dispatcher finds it in the database anyway
                log.exception("cannot queue a detection", extra=kv(name=c.name))
                self._backlog = True
        intake.done(done)  # (intake flushes the store to disk before it deletes them)
        if refused:
            intake.reject_claimed(refused)
        if failed:  # one line a batch: a failing database must not flood the log a line a detection
            log.error("cannot record detections; their files stay in cur/ and are delivered again",
                      extra=kv(count=len(failed), first=failed[0], error=failure))
            intake.release(failed)
        self.update_pause()
        self.wake.set()
        self._changed()

    async def submit(self, detection: dict[str, Any], *, spool_name: str | None = None,
                     source: str = "api") -> AddedDetection:
        """Commits a detection that came as a request (the API's `detections.submit`) or a message (NATS)
        rather than a spool file; from there on it goes the spool's way. `spool_name` names where it came
        from, as a spool file's name does, so the same message delivered again is a replay and runs once.
        ValueError when the store refuses a value."""
        if self.life.stopping:
            raise NotAccepting("sdd is stopping")
        added = await self.store.record_detection(detection, spool_name=spool_name)
        self.accepted(added, detection, source)
        self.update_pause()
        self.wake.set()
        return added

    def accepted(self, added: AddedDetection, detection: dict[str, Any], source: str = "spool") -> None:
        state = str(added.state)
        did = str(added.detection_id)
        if added.replayed and state != "queued":
            return  # committed before a crash and already dealt with
        ext = external_id(detection)
        if added.duplicate_of is not None and state == "duplicate":
            if self.on_detection is not None:
                self.on_detection(source, "duplicate")
            self.stats["duplicates"] += 1
            self.hub.publish(events.DETECTION_DUPLICATE, {"detection_id": did, "external_id": ext,
                                                          "of": str(added.duplicate_of)})
            if log.isEnabledFor(logging.INFO):
                log.info("detection duplicate", extra=story(detection=did, external_id=ext or "-",
                                                            of=str(added.duplicate_of), reason="same id"))
            return
        if not added.replayed:
            if self.on_detection is not None:
                self.on_detection(source, "accepted")
            self.stats["received"] += 1
            self.hub.publish(events.DETECTION_RECEIVED, {
                "detection_id": did, "external_id": ext, "type": detection.get("type"),
                "severity": _str(detection.get("severity")), "file_path": _str(detection.get("file_path"))})
            if log.isEnabledFor(logging.INFO):
                log.info("detection accepted", extra=story(
                    detection=did, event=LogEvent.DETECTION_ACCEPTED, external_id=ext or "-", type=detection.get("type"),
                    severity=_str(detection.get("severity")) or "-", file=_str(detection.get("file_path")) or "-"))
        if state != "queued":
            return
        if not added.replayed:
            self.queued += 1
        if did in self._ready_ids or did in self._in_progress:
            return  # (a replay — a NATS message delivered again — of one on its way to its runs)
        if len(self._ready) < READY_WINDOW and not self._backlog:
            self._ready.append((did, detection))
            self._ready_ids.add(did)
        else:
            self._backlog = True

    def update_pause(self) -> None:
        if self.intake is None:
            return
        limit = self.settings.max_queued
        if not self.paused and self.queued >= limit:
            self.paused = True
            self.intake.pause()
            log.info("back-pressure: claiming paused", extra=kv(queued=self.queued))
        elif self.paused and self.queued <= limit // 2:
            self.paused = False
            self.intake.resume()
            log.info("back-pressure: claiming resumed", extra=kv(queued=self.queued))

    # ---- dispatch: queued detections → runs -----------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.life.stopping:
                return
            try:
                self._dispatch_available()
            except Exception:
                # The dispatcher must outlive any bug or database hiccup: log, pause, go on.
                log.exception("dispatcher error; retrying in 1s")
                await asyncio.sleep(1.0)
                self.wake.set()
            self.update_pause()
            self._changed()

    def _dispatch_available(self) -> None:
        limit = self.settings.max_concurrent_runs
        while self._busy_runs(limit) < limit and not self.life.stopping:
            item = self._next_detection()
            if item is None:
                return
            try:
                self._dispatch(*item)
            except Exception as exc:
                log.exception("cannot dispatch a detection", extra=kv(detection_id=item[0]))
                self._set_state(item[0], "no_match", f"dispatch failed: {type(exc).__name__}: {exc}")

    def _busy_runs(self, limit: int) -> int:
        """Active runs that count against max_concurrent_runs (`_lending`)."""
        held, elsewhere, recording = self._lending(limit, self.waiting_runs, self.outbound_runs)
        return len(self.engine.active_runs) - held - elsewhere - recording

    def _lending(self, limit: int, waiting: set[str], outbound: Mapping[str, int] | list[str]) -> tuple[int, int, int]:
        """The active runs that lend their slot: those a guard holds (a step waiting for a rate limit's slot),
        up to WAITING_RUNS_FACTOR x the limit (issue 13: waits must not starve the rest); those kept waiting by
        another party (a mail relay, a webhook, a scanner), up to OUTBOUND_RUNS_FACTOR x the limit; those only
        waiting for their record's commit, up to RECORDING_RUNS_FACTOR x the limit."""
        elsewhere = len(outbound) if not waiting else sum(1 for run_id in outbound if run_id not in waiting)
        return (min(len(waiting), WAITING_RUNS_FACTOR * limit), min(elsewhere, OUTBOUND_RUNS_FACTOR * limit),
                min(len(self.recording_runs), RECORDING_RUNS_FACTOR * limit))

    def slots(self) -> dict[str, int]:
        """What the run slots are doing, for `status` and the metrics: the limit, the runs counted against it
        (`busy`) and those that lend theirs. Safe from another thread (a scrape): it counts copies, each made
        in one step under the GIL."""
        limit = self.settings.max_concurrent_runs
        held, elsewhere, recording = self._lending(limit, set(self.waiting_runs), list(self.outbound_runs))
        return {"limit": limit, "busy": max(len(self.engine.active_runs) - held - elsewhere - recording, 0),
                "held_by_guard": held, "waiting_elsewhere": elsewhere, "recording": recording}

    def run_waiting(self, run_id: str, waiting: bool) -> None:
        """A guard began (or stopped) holding one of the run's steps; a held run's slot may go to the next."""
        if waiting:
            self.waiting_runs.add(run_id)
            self.wake.set()
        else:
            self.waiting_runs.discard(run_id)

    def run_outbound(self, run_id: str, waiting: bool) -> None:
        """One of the run's steps began (or ended) waiting on a remote party; meanwhile its slot may go to the
        next detection. Counted: two parallel steps may each wait."""
        count = self.outbound_runs.get(run_id, 0) + (1 if waiting else -1)
        if count > 0:
            self.outbound_runs[run_id] = count
        else:
            self.outbound_runs.pop(run_id, None)
        if waiting:
            self.wake.set()

    def run_recording(self, run_id: str) -> None:
        """A run's steps are done and its final record is being committed: it acts no more, its slot may go
        to the next detection (the run stays active until the commit, then `run_finished`)."""
        self.recording_runs.add(run_id)
        self.wake.set()

    def run_finished(self, run_id: str) -> None:
        """A run ended: its slot is free."""
        self.waiting_runs.discard(run_id)
        self.recording_runs.discard(run_id)
        self.outbound_runs.pop(run_id, None)
        self.wake.set()

    def _next_detection(self) -> tuple[str, dict[str, Any], bool] | None:
        if self._ready:
            did, det = self._ready.popleft()
            self._ready_ids.discard(did)
            return did, det, False
        if not self._backlog:
            return None
        # Refill from the database; anything already on its way to a run is skipped.
        rows = self.store.pending_detections(READY_WINDOW)
        for row in rows:
            did = str(row["detection_id"])
            if did not in self._in_progress and did not in self._ready_ids:
                self._ready.append((did, row.get("data") or {}))
                self._ready_ids.add(did)
        if len(rows) < READY_WINDOW:
            self._backlog = False
        if not self._ready:
            return None
        did, det = self._ready.popleft()
        self._ready_ids.discard(did)
        return did, det, True

    def _dispatch(self, detection_id: str, detection: dict[str, Any], from_db: bool) -> None:
        """Matches one queued detection and starts its runs; the state is written after the runs exist."""
        self.queued = max(0, self.queued - 1)
        self._in_progress.add(detection_id)
        if from_db and self.store.runs_for_detection(detection_id):
            # A crash came between creating its runs and marking it: they are being resumed.
            self._set_state(detection_id, "matched", "runs existed at start-up")
            return
        result = match(self.engine.workflows, detection, detection_id, excluded=self._is_excluded(detection),
                       dedup=self.dedup)
        if result.decision is Decision.MATCHED and self._dedup_window_predates_us():
            result = self._dedup_from_history(result, detection)
        ext = external_id(detection)
        if result.decision is not Decision.MATCHED:
            self._set_state(detection_id, result.decision.value, result.note)
            if result.decision is Decision.DUPLICATE:
                self.stats["duplicates"] += 1
                self.hub.publish(events.DETECTION_DUPLICATE, {"detection_id": detection_id, "external_id": ext,
                                                              "of": result.duplicate_of})
                log.info("detection duplicate", extra=story(detection=detection_id, external_id=ext or "-",
                                                            of=result.duplicate_of, reason=result.note))
            elif result.decision is Decision.EXCLUDED:
                self.stats["excluded"] += 1
                self.hub.publish(events.DETECTION_EXCLUDED, {"detection_id": detection_id, "external_id": ext})
                log.info("detection excluded", extra=story(detection=detection_id, external_id=ext or "-",
                                                           reason=result.note))
            else:
                self._no_match(detection_id, ext, result.note or "no workflow's trigger matches it")
            return
        started = []
        for wf in result.workflows:
            try:
                handle = self._start(wf, None, detection, detection_id, Trigger.DETECTION)
            except Exception as exc:  # noqa: BLE001 -- must not stop the daemon
                log.error("run failed to start", extra=story(workflow=wf.workflow_id, detection=detection_id,
                                                             error=exc))
                continue
            started.append(handle.run_id)
        if not started:
            self._set_state(detection_id, "no_match", "no run could be started")
            self._no_match(detection_id, ext, "no run could be started", count=False)
            return
        if self.hub.wants(events.DETECTION_MATCHED):
            self.hub.publish(events.DETECTION_MATCHED, {"detection_id": detection_id, "external_id": ext,
                                                        "runs": started})
        # Marked `matched` once every run is recorded (see _run_recorded): a crash in between leaves it
        # `queued`, and the start-up check above finds its runs instead of starting them twice.
        self._awaiting_start[detection_id] = (len(started), result.note)

    def _no_match(self, detection_id: str, ext: str | None, reason: str, count: bool = True) -> None:
        if count:
            self.stats["no_match"] += 1
        self.hub.publish(events.DETECTION_NO_MATCH, {"detection_id": detection_id, "external_id": ext,
                                                     "reason": reason})
        log.info("detection not matched", extra=story(detection=detection_id, external_id=ext or "-",
                                                      reason=reason))

    def _dedup_window_predates_us(self) -> bool:
        return self.history_dedup and time.monotonic() - self._started_mono < self.settings.dedup_window

    def _dedup_from_history(self, result: MatchResult, detection: Mapping[str, Any]) -> MatchResult:
        """The in-memory window starts empty: until it covers a whole window, also ask the history."""
        path, threat = detection.get("file_path"), detection.get("threat_name")
        if not isinstance(path, str) or not path:
            return result
        since = time.time() - self.settings.dedup_window
        fresh, first = [], None
        for wf in result.workflows:
            run_id = self.store.recent_run(wf.workflow_id, path, threat if isinstance(threat, str) else None, since)
            if run_id is None:
                fresh.append(wf)
            elif first is None:
                first = (self.store.get_run(run_id) or {}).get("detection_id") or run_id
        if fresh:
            return replace(result, workflows=tuple(fresh))
        return MatchResult(Decision.DUPLICATE, duplicate_of=first,
                           note=f"same file and threat as {first} within {self.settings.dedup_window:g}s")

    def _is_excluded(self, detection: Mapping[str, Any]) -> bool:
        # Read the table again only after an exclusion was added or removed (through the watched store).
        version = self.store.exclusions_version
        if self._exclusions is None or version != self._exclusions_version:
            try:
                self._exclusions = Exclusions.from_rows(self.store.list_exclusions())
                self._exclusions_version = version
            except Exception as exc:  # noqa: BLE001 -- must not stop the daemon
                log.warning("exclusions unreadable", extra=kv(error=exc))
                return False
        return self._exclusions.excludes(detection)

    def _set_state(self, detection_id: str, state: str, note: str | None) -> None:
        # Queued on the writer at once (FIFO, after the runs' rows); a future, not a task, per detection.
        try:
            fut = self.store.write(set_detection_state_op(detection_id, state, note))
        except Exception:
            self._in_progress.discard(detection_id)
            raise
        fut.add_done_callback(functools.partial(self._state_written, detection_id))

    def _state_written(self, detection_id: str, fut: asyncio.Future[Any]) -> None:
        self._in_progress.discard(detection_id)
        if not self._in_progress and self._backlog and not self._ready:
            # A refill skipped rows still `queued` only because their state write was in flight: with no
            # commit or finished run left to wake the loop, those behind them would wait for the next start.
            self.wake.set()
        if not fut.cancelled() and fut.exception() is not None:
            log.error("cannot record a detection's state", extra=kv(detection_id=detection_id,
                                                                     error=fut.exception()))

    def _start(self, workflow: Workflow, context: Mapping[str, Any] | None, detection: Mapping[str, Any] | None,
               detection_id: str | None, trigger: Trigger, uid: int | None = None) -> RunHandle:
        if self.life.stopping:
            raise NotAccepting("sdd is stopping")
        labels = run_labels(detection_id=detection_id, external_id=external_id(detection), trigger=trigger, uid=uid)
        handle = self.engine.start(workflow, context, detection=detection, run_id=new_run_id(), labels=labels)
        self.stats["runs_started"] += 1
        return handle

    async def start_requested(self, workflow: Workflow, context: Mapping[str, Any] | None,
                              detection: dict[str, Any] | None, uid: int | None) -> Started:
        """A run started by request (`runs.start`), optionally as if `detection` had arrived: that detection
        is recorded (so the run's history and a resume after a crash have it), but as a sample: it claims no
        producer id (dedup key) and is marked matched by this run from the start. ValueError when the store
        refuses it."""
        if self.life.stopping:
            raise NotAccepting("sdd is stopping")
        detection_id = None
        if detection is not None:
            added = await self.store.record_detection(
                detection, state="matched", dedup=False,
                note=f"sample detection given to runs.start of {workflow.workflow_id}")
            detection_id = str(added.detection_id)
        return Started(self._start(workflow, context, detection, detection_id, Trigger.API, uid), detection_id)

    async def launch_scheduled(self, workflow: Workflow) -> asyncio.Task[WorkflowResult] | None:
        """The scheduler's launcher: a run of `workflow` by its schedule, while the daemon runs."""
        if not self.life.running:
            return None
        handle = self._start(workflow, None, None, None, Trigger.SCHEDULE)
        return handle.task

    def when_recorded(self, run_id: str) -> asyncio.Future[None]:
        """Resolves once the recorder has enqueued the row of `run_id` (a write enqueued after that is committed
        with or after it). Ask before the run starts."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._recorded_waiters[run_id] = fut
        return fut

    def run_recorded(self, run_id: str, detection_id: str | None) -> None:
        """The recorder has enqueued a run's row: once every run of a detection has, the detection is marked
        `matched` (enqueued after those rows, so committed with or after them)."""
        if self._recorded_waiters:
            waiter = self._recorded_waiters.pop(run_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if detection_id is None:
            return
        waiting = self._awaiting_start.get(detection_id)
        if waiting is None:
            return
        left, note = waiting
        if left > 1:
            self._awaiting_start[detection_id] = (left - 1, note)
        else:
            del self._awaiting_start[detection_id]
            self._set_state(detection_id, "matched", note)


async def _failed(exc: BaseException) -> Any:
    raise exc


def _str(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)
