"""The dispatcher: a detection's way from the spool to its runs.

Intake (its own thread) hands over a parsed batch → `_commit()` records each detection in the store (state
`queued`, fsync'd) and only then lets intake delete the spool files → the dispatch loop takes queued
detections while fewer than `max_concurrent_runs` runs are active, matches them (triggers, exclusions,
de-duplication) and starts their runs; a detection is marked `matched` once the history has enqueued the rows
of all its runs (`run_recorded`). When runs are saturated, detections wait in the database, not in memory:
only a window of `READY_WINDOW` is kept here and the rest is read back with `pending_detections()`, and intake
stops claiming while `intake.max_queued` are waiting.

It works on the daemon's components (`self.d`: store, intake, engine, workflows, config, hub), which the
daemon owns and may replace on reload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sdd import hub as events
from sdd.dispatch.matcher import Decision, DedupWindow, Exclusions, MatchResult, match
from sdd.engine import RunHandle, Workflow, new_run_id
from sdd.errors import NotAccepting
from sdd.intake.watch import Claimed, Rejected
from sdd.logging import LogEvent, kv, story
from sdd.store.writes import record_detection_op, record_detections_op, set_detection_state_op

if TYPE_CHECKING:
    from sdd.daemon.lifecycle import Daemon

log = logging.getLogger("sdd.daemon")

READY_WINDOW = 1000         # detections the dispatcher keeps in memory; the rest wait in the database
WAITING_RUNS_FACTOR = 4     # runs held by a guard, beyond max_concurrent_runs, at most this x the limit


@dataclass(frozen=True, slots=True)
class RunOrigin:
    """What started a run, kept from just before it starts until it finishes: the engine's events do not carry
    sdd's detection id, nor (for runs resumed or started by hand) the producer's."""

    detection_id: str | None = None   # sdd's
    external_id: str | None = None    # the producer's own "id", when the detection had one
    trigger: str = "detection"        # "detection" | "api" | "schedule"
    workflow_id: str | None = None


def external_id(detection: Mapping[str, Any] | None) -> str | None:
    """The producer's id of a detection (its `id` field, a string or an integer), as text."""
    if detection is None:
        return None
    value = detection.get("id")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return value if isinstance(value, str) else str(value)


class WatchedStore:
    """The store as the daemon hands it out, counting exclusion changes so the matcher can keep the
    exclusions in memory instead of querying SQLite for every detection. Everything else is the store's."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.exclusions_version = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def add_exclusion(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._store.add_exclusion(*args, **kwargs)
        finally:
            self.exclusions_version += 1

    async def remove_exclusion(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._store.remove_exclusion(*args, **kwargs)
        finally:
            self.exclusions_version += 1


class Dispatcher:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.wake = asyncio.Event()    # something to dispatch, or a run slot freed
        self._started_mono = time.monotonic()
        self._ready: deque[tuple[str, dict[str, Any]]] = deque()
        self._ready_ids: set[str] = set()
        self._backlog = True            # there may be queued detections in the database not in _ready
        self.queued = 0                 # detections committed and not yet matched
        self.paused = False
        self.dedup = DedupWindow(daemon.config.engine.dedup_window)
        self._exclusions: Exclusions | None = None
        self._exclusions_version = -1
        self.history_dedup = False      # runs from before this start may still be inside the dedup window
        self.runs: dict[str, RunOrigin] = {}              # run_id → what started it, until RunFinished
        self._awaiting_start: dict[str, list[Any]] = {}   # detection id → [runs still to record, note]
        self._recorded_waiters: dict[str, asyncio.Future[None]] = {}  # run id → resolved once its row is queued
        # Dispatched, but the state write not yet committed: the database still says `queued`, so a
        # refill from it must not dispatch them again.
        self._in_progress: set[str] = set()
        # A refill found only detections in `_in_progress`: the next state write to land must wake the loop,
        # or, with no run finishing to wake it, the rest of the backlog would wait for the next detection.
        self._refill_blocked = False
        self.on_detection: Callable[[str, str], None] | None = None  # (source, outcome), for the metrics

    def deliver(self, claimed: list[Claimed], rejected: list[Rejected]) -> None:
        """Called on the intake thread."""
        self.d.threadsafe(self._on_batch, claimed, rejected)

    def _on_batch(self, claimed: list[Claimed], rejected: list[Rejected]) -> None:
        for r in rejected:
            if self.on_detection is not None:
                self.on_detection("spool", "rejected")
            self.d.stats["rejected"] += 1
            self.d.hub.publish(events.DETECTION_REJECTED, {"name": r.name, "reason": r.reason})
        if claimed:
            self.d.spawn(self._commit(claimed), "commit")

    async def _commit(self, claimed: list[Claimed]) -> None:
        store, intake = self.d.store, self.d.intake
        assert intake is not None
        results: list[Any] = [None] * len(claimed)
        ops: list[tuple[int, Any]] = []
        for i, c in enumerate(claimed):
            try:
                ops.append((i, record_detection_op(c.detection, c.name, None, "queued", None)))
            except Exception as exc:  # noqa: BLE001 -- the store refused the value (checked in this thread)
                results[i] = exc
        if ops:
            # The whole batch as one operation: one future and one wake-up instead of one per detection.
            # fsync'd (durable) before the spool files go.
            try:
                added = await store.write(record_detections_op([op for _, op in ops]), durable=True)
            except Exception:  # noqa: BLE001 -- one of them failed: nothing committed; one write each
                waits: list[Any] = []
                for _, op in ops:
                    try:
                        waits.append(store.write(op, durable=True))
                    except Exception as exc:  # noqa: BLE001 -- e.g. the store is closed
                        waits.append(_failed(exc))
                added = await asyncio.gather(*waits, return_exceptions=True)
            for (i, _), res in zip(ops, added):
                results[i] = res
        done: list[str] = []
        failed: list[str] = []
        refused: list[tuple[str, str]] = []
        for c, res in zip(claimed, results):
            if isinstance(res, BaseException):
                if isinstance(res, ValueError):
                    refused.append((c.name, f"refused by the database: {res}"))
                else:  # the database is failing: keep the file in cur/ for the next start
                    log.error("cannot record a detection", extra=kv(name=c.name, error=res))
                    failed.append(c.name)
                continue
            done.append(c.name)
            try:
                self.accepted(res, c.detection)
            except Exception:  # committed: the dispatcher finds it in the database anyway
                log.exception("cannot queue a detection", extra=kv(name=c.name))
                self._backlog = True
        intake.done(done)
        if refused:
            intake.reject_claimed(refused)
        if failed:
            intake.release(failed)
        self.update_pause()
        self.wake.set()
        self.d.publish_status()

    def accepted(self, added: Any, detection: dict[str, Any], source: str = "spool") -> None:
        state = str(added.state)
        did = str(added.detection_id)
        if added.replayed and state != "queued":
            return  # committed before a crash and already dealt with
        ext = external_id(detection)
        if added.duplicate_of is not None and state == "duplicate":
            if self.on_detection is not None:
                self.on_detection(source, "duplicate")
            self.d.stats["duplicates"] += 1
            self.d.hub.publish(events.DETECTION_DUPLICATE, {"detection_id": did, "external_id": ext,
                                                          "of": str(added.duplicate_of)})
            if log.isEnabledFor(logging.INFO):
                log.info("detection duplicate", extra=story(detection=did, external_id=ext or "-",
                                                            of=str(added.duplicate_of), reason="same id"))
            return
        if not added.replayed:
            if self.on_detection is not None:
                self.on_detection(source, "accepted")
            self.d.stats["received"] += 1
            self.d.hub.publish(events.DETECTION_RECEIVED, {
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
        if self.d.intake is None:
            return
        limit = self.d.config.intake.max_queued
        if not self.paused and self.queued >= limit:
            self.paused = True
            self.d.intake.pause()
            log.info("back-pressure: claiming paused", extra=kv(queued=self.queued))
        elif self.paused and self.queued <= limit // 2:
            self.paused = False
            self.d.intake.resume()
            log.info("back-pressure: claiming resumed", extra=kv(queued=self.queued))

    # ---- dispatch: queued detections → runs -----------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.d.stopping:
                return
            try:
                self._dispatch_available()
            except Exception:
                # The dispatcher must outlive any bug or database hiccup: log, pause, go on.
                log.exception("dispatcher error; retrying in 1s")
                await asyncio.sleep(1.0)
                self.wake.set()
            self.update_pause()
            self.d.publish_status()

    def _dispatch_available(self) -> None:
        limit = self.d.config.engine.max_concurrent_runs
        while self._busy_runs(limit) < limit and not self.d.stopping:
            item = self._next_detection()
            if item is None:
                return
            try:
                self._dispatch(*item)
            except Exception as exc:
                log.exception("cannot dispatch a detection", extra=kv(detection_id=item[0]))
                self._set_state(item[0], "no_match", f"dispatch failed: {type(exc).__name__}: {exc}")

    def _busy_runs(self, limit: int) -> int:
        """Active runs that count against max_concurrent_runs: those a guard holds (a step waiting for a rate
        limit's slot) do not, up to WAITING_RUNS_FACTOR x the limit (issue 13: waits must not starve the rest)."""
        waiting = len(getattr(self.d, "waiting_runs", ()))
        return len(self.d.engine.active_runs) - min(waiting, WAITING_RUNS_FACTOR * limit)

    def _next_detection(self) -> tuple[str, dict[str, Any], bool] | None:
        if self._ready:
            did, det = self._ready.popleft()
            self._ready_ids.discard(did)
            return did, det, False
        if not self._backlog:
            return None
        # Refill from the database; anything already on its way to a run is skipped.
        rows = self.d.store.pending_detections(READY_WINDOW)
        for row in rows:
            did = str(row["detection_id"])
            if did not in self._in_progress and did not in self._ready_ids:
                self._ready.append((did, row.get("data") or {}))
                self._ready_ids.add(did)
        if len(rows) < READY_WINDOW:
            self._backlog = False
        if not self._ready:
            self._refill_blocked = bool(rows)
            return None
        did, det = self._ready.popleft()
        self._ready_ids.discard(did)
        return did, det, True

    def _dispatch(self, detection_id: str, detection: dict[str, Any], from_db: bool) -> None:
        """Matches one queued detection and starts its runs; the state is written after the runs exist."""
        self.queued = max(0, self.queued - 1)
        self._in_progress.add(detection_id)
        if from_db and self.d.store.runs_for_detection(detection_id):
            # A crash came between creating its runs and marking it: they are being resumed.
            self._set_state(detection_id, "matched", "runs existed at start-up")
            return
        result = match(self.d.workflows, detection, detection_id, excluded=self._is_excluded(detection),
                       dedup=self.dedup)
        if result.decision is Decision.MATCHED and self._dedup_window_predates_us():
            result = self._dedup_from_history(result, detection)
        ext = external_id(detection)
        if result.decision is not Decision.MATCHED:
            self._set_state(detection_id, result.decision.value, result.note)
            if result.decision is Decision.DUPLICATE:
                self.d.stats["duplicates"] += 1
                self.d.hub.publish(events.DETECTION_DUPLICATE, {"detection_id": detection_id, "external_id": ext,
                                                              "of": result.duplicate_of})
                log.info("detection duplicate", extra=story(detection=detection_id, external_id=ext or "-",
                                                            of=result.duplicate_of, reason=result.note))
            elif result.decision is Decision.EXCLUDED:
                self.d.stats["excluded"] += 1
                self.d.hub.publish(events.DETECTION_EXCLUDED, {"detection_id": detection_id, "external_id": ext})
                log.info("detection excluded", extra=story(detection=detection_id, external_id=ext or "-",
                                                           reason=result.note))
            else:
                self._no_match(detection_id, ext, result.note or "no workflow's trigger matches it")
            return
        started = []
        for wf in result.workflows:
            try:
                handle = self.start(wf, None, detection=detection, detection_id=detection_id)
            except Exception as exc:  # noqa: BLE001 -- must not stop the daemon
                log.error("run failed to start", extra=story(workflow=wf.workflow_id, detection=detection_id,
                                                             error=exc))
                continue
            started.append(handle.run_id)
        if not started:
            self._set_state(detection_id, "no_match", "no run could be started")
            self._no_match(detection_id, ext, "no run could be started", count=False)
            return
        if self.d.hub.subscriber_count:
            self.d.hub.publish(events.DETECTION_MATCHED, {"detection_id": detection_id, "external_id": ext,
                                                        "runs": started})
        # Marked `matched` once every run is recorded (see _run_recorded): a crash in between leaves it
        # `queued`, and the start-up check above finds its runs instead of starting them twice.
        self._awaiting_start[detection_id] = [len(started), result.note]

    def _no_match(self, detection_id: str, ext: str | None, reason: str, count: bool = True) -> None:
        if count:
            self.d.stats["no_match"] += 1
        self.d.hub.publish(events.DETECTION_NO_MATCH, {"detection_id": detection_id, "external_id": ext,
                                                     "reason": reason})
        log.info("detection not matched", extra=story(detection=detection_id, external_id=ext or "-",
                                                      reason=reason))

    def _dedup_window_predates_us(self) -> bool:
        return self.history_dedup and time.monotonic() - self._started_mono < self.d.config.engine.dedup_window

    def _dedup_from_history(self, result: MatchResult, detection: Mapping[str, Any]) -> MatchResult:
        """The in-memory window starts empty: until it covers a whole window, also ask the history."""
        path, threat = detection.get("file_path"), detection.get("threat_name")
        if not isinstance(path, str) or not path:
            return result
        since = time.time() - self.d.config.engine.dedup_window
        fresh, first = [], None
        for wf in result.workflows:
            run_id = self.d.store.recent_run(wf.workflow_id, path, threat if isinstance(threat, str) else None, since)
            if run_id is None:
                fresh.append(wf)
            elif first is None:
                first = (self.d.store.get_run(run_id) or {}).get("detection_id") or run_id
        if fresh:
            return replace(result, workflows=tuple(fresh))
        return MatchResult(Decision.DUPLICATE, duplicate_of=first,
                           note=f"same file and threat as {first} within {self.d.config.engine.dedup_window:g}s")

    def _is_excluded(self, detection: Mapping[str, Any]) -> bool:
        # Read the table again only after an exclusion was added or removed (through the watched store).
        version = self.d.store.exclusions_version
        if self._exclusions is None or version != self._exclusions_version:
            try:
                self._exclusions = Exclusions.from_rows(self.d.store.list_exclusions())
                self._exclusions_version = version
            except Exception as exc:  # noqa: BLE001 -- must not stop the daemon
                log.warning("exclusions unreadable", extra=kv(error=exc))
                return False
        return self._exclusions.excludes(detection)

    def _set_state(self, detection_id: str, state: str, note: str | None) -> None:
        # Queued on the writer at once (FIFO, after the runs' rows); a future, not a task, per detection.
        try:
            fut = self.d.store.write(set_detection_state_op(detection_id, state, note))
        except Exception:
            self._in_progress.discard(detection_id)
            raise
        fut.add_done_callback(lambda f, did=detection_id: self._state_written(did, f))

    def _state_written(self, detection_id: str, fut: asyncio.Future[Any]) -> None:
        self._in_progress.discard(detection_id)
        if self._refill_blocked:
            self._refill_blocked = False
            self.wake.set()
        if not fut.cancelled() and fut.exception() is not None:
            log.error("cannot record a detection's state", extra=kv(detection_id=detection_id,
                                                                     error=fut.exception()))

    def expect_run(self, run_id: str, detection_id: str | None, trigger: str = "detection",
                   uid: int | None = None, external: str | None = None, workflow_id: str | None = None) -> None:
        """Tells history (and our hub events and log lines) which of our detections a run serves, before it
        starts."""
        self.runs[run_id] = RunOrigin(detection_id, external, trigger, workflow_id)
        self.d.recorder.note_run(run_id, detection_id=detection_id, trigger=trigger, uid=uid)

    def expect_resumed_run(self, run_id: str, detection_id: str | None, trigger: str = "detection") -> None:
        """`expect_run` for a run crash recovery resumes: the producer's id is read back from the store."""
        external = None
        if detection_id is not None:
            try:
                external = external_id((self.d.store.get_detection(detection_id) or {}).get("data"))
            except Exception as exc:  # noqa: BLE001 -- the id only labels events and log lines
                log.warning("cannot read a resumed run's detection", extra=story(run_id=run_id,
                                                                                 detection=detection_id, error=exc))
        self.expect_run(run_id, detection_id, trigger, external=external)

    def start(self, workflow: Workflow, context: Mapping[str, Any] | None, *, detection: Mapping[str, Any] | None,
              detection_id: str | None, trigger: str = "detection", uid: int | None = None) -> RunHandle:
        if self.d.stopping:
            raise NotAccepting("sdd is stopping")
        run_id = new_run_id()
        self.expect_run(run_id, detection_id, trigger, uid, external_id(detection), workflow.workflow_id)
        try:
            handle = self.d.engine.start(workflow, context, detection=detection, run_id=run_id)
        except Exception:
            self.runs.pop(run_id, None)
            raise
        self.d.stats["runs_started"] += 1
        return handle

    async def launch_scheduled(self, workflow: Workflow) -> Any:
        if not self.d.running:
            return None
        handle = self.start(workflow, None, detection=None, detection_id=None, trigger="schedule")
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
        waiting[0] -= 1
        if waiting[0] <= 0:
            del self._awaiting_start[detection_id]
            self._set_state(detection_id, "matched", waiting[1])


async def _failed(exc: BaseException) -> Any:
    raise exc


def _str(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)
