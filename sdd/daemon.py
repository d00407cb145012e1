"""The `Daemon`: lifecycle, concurrency and back-pressure, signals, reload — and the facade the API and the
D-Bus bridge call (`status`, `submit_detection`, `start_run`, `cancel_run`, `reload`, `restore_quarantine`).

Life reads top-down: `serve()` → `startup()` → wait for a stop request → `shutdown()`.
A detection's way through it: intake (worker thread) hands over a parsed batch → `_commit()` records each
one in the store (state `queued`) and only then lets intake delete the spool files → the dispatcher takes
queued detections while fewer than `max_concurrent_runs` runs are active, matches them and starts runs. When
runs are saturated detections wait in the database, not in memory: the dispatcher keeps only a small
window of them and reads the rest back with `pending_detections()`, and intake stops claiming while
`intake.max_queued` are waiting.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Any

from . import __version__
from . import hub as events
from .config import Config, ConfigError, load_config
from .engine import RunHandle, Workflow, WorkflowEngine, new_run_id
from .engine.events import EngineEvent, RunFinished, RunStarted, StepFinished, StepStarted
from .hub import EventHub
from .intake import Claimed, Intake, Rejected, SpoolRejection, parse_detection
from .logging import kv, setup_logging
from .matcher import Decision, DedupWindow, Exclusions, MatchResult, match
from .recovery import recover_runs
from .scheduler import Scheduler
from .sdnotify import Notifier, watchdog_interval
from .store.writes import record_detection_op, record_detections_op, set_detection_state_op

log = logging.getLogger("sdd.daemon")

READY_WINDOW = 1000         # detections the dispatcher keeps in memory; the rest wait in the database
PURGE_INTERVAL = 86400.0    # retention purge, daily


class DaemonState(str, Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"

    def __str__(self) -> str:
        return self.value


class DaemonError(Exception):
    """A facade call failed; subclasses say how (the API maps them to error codes)."""


class UnknownWorkflow(DaemonError, LookupError):
    pass


class UnknownRun(DaemonError, LookupError):
    pass


class InvalidRequest(DaemonError, ValueError):
    pass


class NotAccepting(DaemonError):
    """The daemon is stopping and starts nothing new."""


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


class Daemon:
    def __init__(self, config: Config, *, config_path: str | os.PathLike[str] | None = None,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.hub = EventHub()
        self.state = DaemonState.STARTING
        self.started_at = time.time()
        self._started_mono = time.monotonic()  # uptime must not jump with the wall clock
        self.store: Any = None
        self.engine: WorkflowEngine = None  # type: ignore[assignment]
        self.services: Any = None
        self.recorder: Any = None
        self.workflows: dict[str, Workflow] = {}
        self.workflow_errors: list[str] = []
        self.intake: Intake | None = None
        self.scheduler: Scheduler | None = None
        self.api: Any = None
        self.bus: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._first_scan = asyncio.Event()
        self._ready: deque[tuple[str, dict[str, Any]]] = deque()
        self._ready_ids: set[str] = set()
        self._backlog = True            # there may be queued detections in the database not in _ready
        self._queued = 0                # detections committed and not yet matched
        self._paused = False
        self._dedup = DedupWindow(config.engine.dedup_window)
        self._exclusions: Exclusions | None = None
        self._exclusions_version = -1
        self._history_dedup = False
        self._run_detection: dict[str, str | None] = {}   # run_id → our detection id, until RunStarted
        self._awaiting_start: dict[str, list[Any]] = {}   # detection id → [runs still to announce, note]
        # Dispatched, but the state write not yet committed: the database still says `queued`, so a
        # refill from it must not dispatch them again.
        self._in_progress: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._status_pending = False
        self._status_sent = 0.0
        self._status_last = ""
        self._status_timer: asyncio.TimerHandle | None = None
        self.stats = {"received": 0, "rejected": 0, "duplicates": 0, "excluded": 0, "no_match": 0,
                      "runs_started": 0, "runs_finished": 0}

    # ---- lifecycle ------------------------------------------------------------------------------------------
    async def serve(self) -> int:
        """Runs until SIGTERM/SIGINT (or `request_stop()`); returns the exit status."""
        try:
            await self.startup()
        except Exception:
            log.exception("start-up failed")
            await self._close_resources()
            return 1
        await self._stop.wait()
        await self.shutdown()
        return 0

    def request_stop(self) -> None:
        self._stop.set()

    async def startup(self) -> None:
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        os.makedirs(cfg.paths.state, mode=0o700, exist_ok=True)
        from .history import HistoryRecorder
        from .store import Store

        raw_store = Store.open(cfg.database)
        self.store = WatchedStore(raw_store)
        self.services, actions, action_errors = load_actions(cfg, self.store, self._desktop_notification)
        self._action_specs = actions
        for err in action_errors:
            log.error("action plugin not loaded", extra=kv(error=err))
        self.workflows, issues = load_workflows(cfg, actions)
        self.workflow_errors = [str(i) for i in issues]
        for issue in self.workflow_errors:
            log.error("workflow not loaded", extra=kv(issue=issue))
        self.recorder = HistoryRecorder(raw_store, on_run_recorded=self._run_recorded)
        self.engine = WorkflowEngine(actions, listeners=[self._on_engine_event], workflows=self.workflows,
                                     max_depth=cfg.engine.max_subworkflow_depth)
        log.info("workflows loaded", extra=kv(count=len(self.workflows), errors=len(self.workflow_errors)))

        report = await recover_runs(self.store, self.engine, self.recorder.prior_steps,
                                    before_start=self._expect_run)
        if report.resumed or report.abandoned:
            log.info("crash recovery", extra=kv(**report.to_dict()))
        self._queued = int(self.store.counts().get("queued_detections", 0))
        # Runs from before this start inside the dedup window: memory cannot know them, the history can.
        window = cfg.engine.dedup_window
        self._history_dedup = window > 0 and bool(
            self.store.list_runs(limit=1, since=time.time() - window).items)

        self._install_signals()
        await self._start_api()
        await self._start_bus()
        # Claimed-but-uncommitted files count towards the queue bound too, so the two limits are coupled:
        # at most about 2 x max_queued detections exist between new/ and a run.
        batch = max(1, min(256, cfg.intake.max_queued))
        self.intake = Intake(cfg.paths.spool, self._deliver, max_file_size=cfg.intake.max_file_size,
                             rescan_interval=cfg.intake.rescan_interval, batch_size=batch,
                             max_inflight=max(batch, min(2048, cfg.intake.max_queued)),
                             on_first_scan=lambda: self._threadsafe(self._first_scan.set))
        self._update_pause()
        self.intake.start()
        self._spawn(self._dispatch_loop(), "dispatcher")
        self._wake.set()
        await self._first_scan.wait()
        self.scheduler = Scheduler(self._launch_scheduled)
        self.scheduler.update(self.workflows)
        interval = watchdog_interval()
        if interval:
            self._spawn(self._watchdog_loop(interval), "watchdog")
        self._spawn(self._purge_loop(), "retention")
        self.state = DaemonState.RUNNING
        self.notifier.ready(self._status_line())
        self._publish_status()
        log.info("sdd ready", extra=kv(version=__version__, pid=os.getpid(), spool=cfg.paths.spool,
                                       socket=cfg.paths.socket, workflows=len(self.workflows),
                                       user_mode=cfg.user_mode))

    async def shutdown(self) -> None:
        """Stop claiming, let runs finish within the grace period, then interrupt the rest; flush the store."""
        self.state = DaemonState.STOPPING
        log.info("stopping", extra=kv(active_runs=len(self.engine.active_runs) if self.engine else 0))
        self.notifier.stopping("stopping: draining runs")
        self._publish_status()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.intake is not None:
            await asyncio.to_thread(self.intake.stop)
        # Batches the intake handed over before it stopped are committed, so their files can go.
        await self._settle_commits()
        if self.intake is not None:
            await asyncio.to_thread(self.intake.drain)
        if self.engine is not None and self.engine.active_runs:
            handles = list(self.engine.active_runs.values())
            _, pending = await asyncio.wait([h.task for h in handles], timeout=self.config.engine.shutdown_grace)
            if pending:
                log.warning("grace period over: interrupting runs", extra=kv(count=len(pending)))
                for h in handles:
                    if not h.done():
                        h.cancel(interrupt=True)
                await asyncio.wait(pending, timeout=10)
        await self._close_resources()
        log.info("stopped")

    async def _close_resources(self) -> None:
        for name, component, method in (("API", self.api, "close"), ("D-Bus", self.bus, "stop")):
            if component is not None:
                try:
                    await asyncio.wait_for(getattr(component, method)(), 10)
                except Exception as exc:  # noqa: BLE001 -- must not stop the daemon
                    log.warning(f"{name} did not stop cleanly", extra=kv(error=exc))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
            self.store = None
        self.notifier.close()

    async def _settle_commits(self) -> None:
        commits = [t for t in self._tasks if t.get_name() == "commit"]
        if commits:
            await asyncio.wait(commits, timeout=30)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload(None), "reload"))

    async def _start_api(self) -> None:
        try:
            from .api import ApiServer  # lands separately; the daemon works without it
        except ImportError as exc:
            log.warning("socket API not available", extra=kv(error=exc))
            return
        api = ApiServer(self)
        try:
            await api.start()
        except Exception as exc:
            # A second daemon answering on the socket must stop this one before it touches the spool.
            if type(exc).__name__ == "AlreadyRunning":
                raise
            log.error("socket API failed to start; running without it", extra=kv(error=exc))
            return
        self.api = api

    async def _start_bus(self) -> None:
        if self.config.dbus.bus == "none":
            return
        try:
            from .bus import BusBridge
        except ImportError as exc:
            log.warning("D-Bus bridge not available", extra=kv(error=exc))
            return
        try:
            bridge = BusBridge(self.hub, self.status, self.config.dbus.bus)
            await bridge.start()
        except Exception as exc:  # noqa: BLE001 -- must not stop the daemon
            log.error("D-Bus bridge failed to start; running without it", extra=kv(error=exc))
            return
        self.bus = bridge

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception(), extra=kv(task=task.get_name()))

    def _threadsafe(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop closed meanwhile
                pass

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _purge_loop(self) -> None:
        while True:
            try:
                result = await self.store.purge(self.config.engine.history_retention_days)
                log.info("history purged", extra=kv(retention_days=self.config.engine.history_retention_days,
                                                    result=result))
            except Exception as exc:  # noqa: BLE001 -- must not stop the daemon
                log.error("history purge failed", extra=kv(error=exc))
            await asyncio.sleep(PURGE_INTERVAL)

    # ---- intake → store ---------------------------------------------------------------------------------------
    def _deliver(self, claimed: list[Claimed], rejected: list[Rejected]) -> None:
        """Called on the intake thread."""
        self._threadsafe(self._on_batch, claimed, rejected)

    def _on_batch(self, claimed: list[Claimed], rejected: list[Rejected]) -> None:
        for r in rejected:
            self.stats["rejected"] += 1
            self.hub.publish(events.DETECTION_REJECTED, {"name": r.name, "reason": r.reason})
        if claimed:
            self._spawn(self._commit(claimed), "commit")

    async def _commit(self, claimed: list[Claimed]) -> None:
        store, intake = self.store, self.intake
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
                self._accepted(res, c.detection)
            except Exception:  # committed: the dispatcher finds it in the database anyway
                log.exception("cannot queue a detection", extra=kv(name=c.name))
                self._backlog = True
        intake.done(done)
        if refused:
            intake.reject_claimed(refused)
        if failed:
            intake.release(failed)
        self._update_pause()
        self._wake.set()
        self._publish_status()

    def _accepted(self, added: Any, detection: dict[str, Any]) -> None:
        state = str(added.state)
        did = str(added.detection_id)
        if added.replayed and state != "queued":
            return  # committed before a crash and already dealt with
        if added.duplicate_of is not None and state == "duplicate":
            self.stats["duplicates"] += 1
            self.hub.publish(events.DETECTION_DUPLICATE, {"detection_id": did, "of": str(added.duplicate_of)})
            return
        if not added.replayed:
            self.stats["received"] += 1
            self.hub.publish(events.DETECTION_RECEIVED, {
                "detection_id": did, "type": detection.get("type"), "severity": _str(detection.get("severity")),
                "file_path": _str(detection.get("file_path"))})
        if state != "queued":
            return
        if not added.replayed:
            self._queued += 1
        if did in self._ready_ids:
            return
        if len(self._ready) < READY_WINDOW and not self._backlog:
            self._ready.append((did, detection))
            self._ready_ids.add(did)
        else:
            self._backlog = True

    def _update_pause(self) -> None:
        if self.intake is None:
            return
        limit = self.config.intake.max_queued
        if not self._paused and self._queued >= limit:
            self._paused = True
            self.intake.pause()
            log.info("back-pressure: claiming paused", extra=kv(queued=self._queued))
        elif self._paused and self._queued <= limit // 2:
            self._paused = False
            self.intake.resume()
            log.info("back-pressure: claiming resumed", extra=kv(queued=self._queued))

    # ---- dispatch: queued detections → runs -----------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.state is DaemonState.STOPPING:
                return
            try:
                self._dispatch_available()
            except Exception:
                # The dispatcher must outlive any bug or database hiccup: log, pause, go on.
                log.exception("dispatcher error; retrying in 1s")
                await asyncio.sleep(1.0)
                self._wake.set()
            self._update_pause()
            self._publish_status()

    def _dispatch_available(self) -> None:
        limit = self.config.engine.max_concurrent_runs
        while len(self.engine.active_runs) < limit and self.state is not DaemonState.STOPPING:
            item = self._next_detection()
            if item is None:
                return
            try:
                self._dispatch(*item)
            except Exception as exc:
                log.exception("cannot dispatch a detection", extra=kv(detection_id=item[0]))
                self._set_state(item[0], "no_match", f"dispatch failed: {type(exc).__name__}: {exc}")

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
        self._queued = max(0, self._queued - 1)
        self._in_progress.add(detection_id)
        if from_db and self.store.runs_for_detection(detection_id):
            # A crash came between creating its runs and marking it: they are being resumed.
            self._set_state(detection_id, "matched", "runs existed at start-up")
            return
        result = match(self.workflows, detection, detection_id, excluded=self._is_excluded(detection),
                       dedup=self._dedup)
        if result.decision is Decision.MATCHED and self._dedup_window_predates_us():
            result = self._dedup_from_history(result, detection)
        if result.decision is not Decision.MATCHED:
            self._set_state(detection_id, result.decision.value, result.note)
            if result.decision is Decision.DUPLICATE:
                self.stats["duplicates"] += 1
                self.hub.publish(events.DETECTION_DUPLICATE, {"detection_id": detection_id,
                                                              "of": result.duplicate_of})
            elif result.decision is Decision.EXCLUDED:
                self.stats["excluded"] += 1
                self.hub.publish(events.DETECTION_EXCLUDED, {"detection_id": detection_id})
            else:
                self.stats["no_match"] += 1
            return
        started = []
        for wf in result.workflows:
            try:
                handle = self._start(wf, None, detection=detection, detection_id=detection_id)
            except Exception as exc:  # noqa: BLE001 -- must not stop the daemon
                log.error("run failed to start", extra=kv(workflow=wf.workflow_id, error=exc))
                continue
            started.append(handle.run_id)
        if not started:
            self._set_state(detection_id, "no_match", "no run could be started")
            return
        # Marked `matched` once every run is recorded (see _run_recorded): a crash in between leaves it
        # `queued`, and the start-up check above finds its runs instead of starting them twice.
        self._awaiting_start[detection_id] = [len(started), result.note]

    def _dedup_window_predates_us(self) -> bool:
        return self._history_dedup and time.monotonic() - self._started_mono < self.config.engine.dedup_window

    def _dedup_from_history(self, result: MatchResult, detection: Mapping[str, Any]) -> MatchResult:
        """The in-memory window starts empty: until it covers a whole window, also ask the history."""
        path, threat = detection.get("file_path"), detection.get("threat_name")
        if not isinstance(path, str) or not path:
            return result
        since = time.time() - self.config.engine.dedup_window
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
                           note=f"same file and threat as {first} within {self.config.engine.dedup_window:g}s")

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
        fut.add_done_callback(lambda f, did=detection_id: self._state_written(did, f))

    def _state_written(self, detection_id: str, fut: asyncio.Future[Any]) -> None:
        self._in_progress.discard(detection_id)
        if not fut.cancelled() and fut.exception() is not None:
            log.error("cannot record a detection's state", extra=kv(detection_id=detection_id,
                                                                     error=fut.exception()))

    def _expect_run(self, run_id: str, detection_id: str | None, trigger: str = "detection",
                    uid: int | None = None) -> None:
        """Tells history (and our hub events) which of our detections a run serves, before it starts."""
        self._run_detection[run_id] = detection_id
        self.recorder.note_run(run_id, detection_id=detection_id, trigger=trigger, uid=uid)

    def _start(self, workflow: Workflow, context: Mapping[str, Any] | None, *, detection: Mapping[str, Any] | None,
               detection_id: str | None, trigger: str = "detection", uid: int | None = None,
               dry_run: bool = False) -> RunHandle:
        if self.state is DaemonState.STOPPING:
            raise NotAccepting("sdd is stopping")
        run_id = new_run_id()
        self._expect_run(run_id, detection_id, trigger, uid)
        try:
            handle = self.engine.start(workflow, context, detection=detection, run_id=run_id, dry_run=dry_run)
        except Exception:
            self._run_detection.pop(run_id, None)
            raise
        self.stats["runs_started"] += 1
        return handle

    async def _launch_scheduled(self, workflow: Workflow) -> Any:
        if self.state is not DaemonState.RUNNING:
            return None
        handle = self._start(workflow, None, detection=None, detection_id=None, trigger="schedule")
        log.info("scheduled run started", extra=kv(workflow=workflow.workflow_id, run_id=handle.run_id))
        return handle.task

    # ---- engine events → history and hub ------------------------------------------------------------------
    def _on_engine_event(self, ev: EngineEvent) -> Awaitable[None] | None:
        """History first (awaited when it asks: a non-idempotent step's intent, a run's final status), then
        the hub. Synchronous unless the recorder returns an awaitable, so most events cost no coroutine."""
        pending = self.recorder(ev)
        if pending is not None and inspect.isawaitable(pending):
            return self._publish_after(pending, ev)
        self._publish_engine_event(ev)
        return None

    async def _publish_after(self, pending: Awaitable[Any], ev: EngineEvent) -> None:
        await pending
        self._publish_engine_event(ev)

    def _publish_engine_event(self, ev: EngineEvent) -> None:
        publish = self.hub.publish
        if isinstance(ev, (StepStarted, StepFinished)) and not self.hub.subscriber_count:
            return  # ten per run: not worth building for nobody
        if isinstance(ev, StepStarted):
            publish(events.STEP_STARTED, {"run_id": ev.run_id, "step_id": ev.step_id, "attempt": ev.attempt})
        elif isinstance(ev, StepFinished):
            publish(events.STEP_FINISHED, {"run_id": ev.run_id, "step_id": ev.step_id, "status": str(ev.status),
                                           "seconds": max(0.0, ev.finished_at - ev.started_at), "error": ev.error})
        elif isinstance(ev, RunStarted):
            # The engine knows the detection's own "id"; subscribers want ours (history got it by note_run).
            did = self._run_detection.pop(ev.run_id, None)
            publish(events.RUN_STARTED, {"run_id": ev.run_id, "workflow_id": ev.workflow_id, "detection_id": did})
            self._publish_status()
        elif isinstance(ev, RunFinished):
            # Published after the recorder's awaited commit: a subscriber seeing it can trust the history.
            self.stats["runs_finished"] += 1
            publish(events.RUN_FINISHED, {"run_id": ev.run_id, "workflow_id": ev.workflow_id,
                                          "status": str(ev.status), "seconds": max(0.0, ev.finished_at - ev.started_at),
                                          "error": ev.error})
            # The engine drops the handle when the task ends; a free slot is what the dispatcher waits for.
            if self._loop is not None:
                self._loop.call_soon(self._wake.set)
            self._publish_status()

    def _run_recorded(self, run_id: str, detection_id: str | None) -> None:
        """The recorder has enqueued a run's row: once every run of a detection has, the detection is marked
        `matched` (enqueued after those rows, so committed with or after them)."""
        if detection_id is None:
            return
        waiting = self._awaiting_start.get(detection_id)
        if waiting is None:
            return
        waiting[0] -= 1
        if waiting[0] <= 0:
            del self._awaiting_start[detection_id]
            self._set_state(detection_id, "matched", waiting[1])

    def _desktop_notification(self, title: str, body: str, urgency: str) -> None:
        self.hub.publish(events.NOTIFICATION, {"title": title, "body": body, "urgency": urgency})

    def _publish_status(self) -> None:
        # Coalesced: one status.changed per loop iteration however many runs start or end in it.
        if self._status_pending or self._loop is None:
            return
        self._status_pending = True
        self._loop.call_soon(self._emit_status)

    def _emit_status(self) -> None:
        self._status_pending = False
        self.hub.publish(events.STATUS_CHANGED, {"active_runs": len(self.engine.active_runs) if self.engine else 0,
                                                 "queued_detections": self._queued, "state": self.state.value})
        self._notify_status()

    def _notify_status(self) -> None:
        """`STATUS=` for systemctl status: at most one a second, and the last one always goes out."""
        if not self.notifier.enabled or self._loop is None or self.state is DaemonState.STARTING:
            return
        now = time.monotonic()
        wait = self._status_sent + 1.0 - now
        if wait > 0:
            if self._status_timer is None:
                self._status_timer = self._loop.call_later(wait, self._status_timer_fired)
            return
        self._status_sent = now
        line = self._status_line()
        if line != self._status_last:
            self._status_last = line
            self.notifier.status(line)

    def _status_timer_fired(self) -> None:
        self._status_timer = None
        self._notify_status()

    def _status_line(self) -> str:
        active = len(self.engine.active_runs) if self.engine else 0
        return f"{self.state.value}: {active} active runs, {self._queued} queued, {len(self.workflows)} workflows"

    # ---- the facade --------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        guards: Any = {}
        if self.services is not None:
            try:
                guards = self.services.guards.status()
            except Exception as exc:  # noqa: BLE001 -- must not stop the daemon
                guards = {"error": str(exc)}
        return {
            "version": __version__,
            "state": self.state.value,
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self._started_mono, 3),
            "started_at": self.started_at,
            "active_runs": len(self.engine.active_runs) if self.engine else 0,
            "queued_detections": self._queued,
            "workflows": len(self.workflows),
            "workflow_errors": list(self.workflow_errors),
            "guards": guards,
            "bus": {"spec": self.config.dbus.bus, "connected": bool(getattr(self.bus, "connected", False)),
                    "state": str(getattr(getattr(self.bus, "state", None), "value", "disabled"))},
            "socket": str(self.config.paths.socket),
            "database": str(self.config.database),
            "spool": str(self.config.paths.spool),
            "intake": {"paused": self._paused, **(self.intake.stats if self.intake else {})},
            "user_mode": self.config.user_mode,
            "stats": dict(self.stats),
        }

    async def submit_detection(self, data: Mapping[str, Any], uid: int | None = None) -> dict[str, Any]:
        """A detection from the API rather than the spool: same checks, same path."""
        if self.state is DaemonState.STOPPING:
            raise NotAccepting("sdd is stopping")
        try:
            detection = parse_detection(json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8"))
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidRequest(f"detection: {exc}") from None
        except SpoolRejection as exc:
            raise InvalidRequest(f"detection: {exc}") from None
        try:
            added = await self.store.record_detection(detection, spool_name=None)
        except ValueError as exc:
            raise InvalidRequest(f"detection: {exc}") from None
        self._accepted(added, detection)
        await self._audit(uid, "detections.submit", detection.get("file_path"), str(added.detection_id), None,
                          "accepted", {"type": detection.get("type")})
        self._update_pause()
        self._wake.set()
        return {"detection_id": str(added.detection_id), "state": str(added.state),
                "duplicate_of": None if added.duplicate_of is None else str(added.duplicate_of)}

    async def start_run(self, workflow_id: str, context: Mapping[str, Any] | None = None, dry_run: bool = False,
                        uid: int | None = None) -> dict[str, Any]:
        wf = self.workflows.get(workflow_id)
        if wf is None:
            raise UnknownWorkflow(f"no workflow {workflow_id!r}")
        if context is not None and not isinstance(context, Mapping):
            raise InvalidRequest("context: expected a map")
        plan = self.engine.plan(wf, context) if dry_run else None
        handle = self._start(wf, context, detection=None, detection_id=None, trigger="api", uid=uid,
                             dry_run=dry_run)
        await self._audit(uid, "runs.start", workflow_id, None, handle.run_id, "started", {"dry_run": dry_run})
        out: dict[str, Any] = {"run_id": handle.run_id, "workflow_id": workflow_id, "status": "running",
                               "dry_run": dry_run}
        if plan is not None:
            out["plan"] = plan
        return out

    async def cancel_run(self, run_id: str, uid: int | None = None) -> bool:
        handle = self.engine.active_runs.get(run_id)
        if handle is None:
            if self.store is not None and self.store.get_run(run_id) is None:
                raise UnknownRun(f"no run {run_id!r}")
            return False
        ok = handle.cancel()
        await self._audit(uid, "runs.cancel", run_id, None, run_id, "cancelled" if ok else "already finished", {})
        return ok

    async def restore_quarantine(self, qid: str, on_conflict: str = "fail", uid: int | None = None) -> dict[str, Any]:
        spec = self.engine.registry.get("restore_file")
        if spec is None:
            raise DaemonError("restore_file action is not available")
        result = await spec.handler(quarantine_id=qid, on_conflict=on_conflict, context={})
        await self._audit(uid, "quarantine.restore", qid, None, None, "restored", {"on_conflict": on_conflict})
        return result if isinstance(result, dict) else {"result": result}

    async def reload(self, uid: int | None = None) -> dict[str, Any]:
        """Re-reads config and workflows; all or nothing — on any error the running set stays."""
        self.notifier.reloading()
        errors: list[str] = []
        try:
            new_cfg = load_config(self.config_path, user=self.config.user_mode)
        except ConfigError as exc:
            errors = list(exc.errors)
            new_cfg = None
        workflows: dict[str, Workflow] = {}
        if new_cfg is not None:
            workflows, issues = load_workflows(new_cfg, self._action_specs)
            errors.extend(issues)
        if errors:
            for e in errors:
                log.error("reload refused", extra=kv(error=e))
            self.notifier.ready(self._status_line())
            await self._audit(uid, "reload", None, None, None, "refused", {"errors": errors[:50]})
            return {"ok": False, "errors": errors, "workflows": len(self.workflows)}
        assert new_cfg is not None
        self._apply_config(new_cfg)
        self.workflows = workflows
        self.workflow_errors = []
        self.engine.set_workflows(workflows)
        if self.scheduler is not None:
            self.scheduler.update(workflows)
        log.info("reloaded", extra=kv(workflows=len(workflows)))
        self.notifier.ready(self._status_line())
        await self._audit(uid, "reload", None, None, None, "ok", {"workflows": len(workflows)})
        self._wake.set()
        return {"ok": True, "errors": [], "workflows": len(workflows)}

    def _apply_config(self, new: Config) -> None:
        old = self.config
        for section in ("paths", "api", "dbus", "actions"):
            if getattr(old, section) != getattr(new, section):
                log.warning("config change takes effect after a restart", extra=kv(section=section))
        self.config = replace(old, engine=new.engine, intake=new.intake, logging=new.logging)
        self._dedup.window = new.engine.dedup_window
        if new.logging != old.logging:
            setup_logging(new.logging.level)
        if self.intake is not None:
            self.intake.max_file_size = new.intake.max_file_size
            self.intake.rescan_interval = new.intake.rescan_interval

    async def _audit(self, uid: int | None, action: str, target: Any, detection_id: str | None,
                     run_id: str | None, outcome: str, details: dict[str, Any]) -> None:
        if uid is None or self.store is None:
            return  # only calls made by someone are audited here; the daemon's own acts audit themselves
        try:
            await self.store.audit(uid, action, None if target is None else str(target), detection_id, run_id,
                                   outcome, details)
        except Exception as exc:  # noqa: BLE001 -- must not stop the daemon
            log.warning("audit record failed", extra=kv(action=action, error=exc))


async def _failed(exc: BaseException) -> Any:
    raise exc


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


def _str(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


# ---- loading actions and workflows (also used by `sdd check-config`) -------------------------------------------
def load_actions(config: Config, store: Any, notify: Any) -> tuple[Any, list[Any], list[str]]:
    """(ActionServices, the built-in + plugin ActionSpecs, errors). Never raises: a broken plugin is listed."""
    from .engine.registry import discover_entry_points

    errors: list[str] = []
    services, specs = None, []
    try:
        from .actions import ActionServices, builtin_actions
    except ImportError as exc:
        errors.append(f"built-in actions unavailable: {exc}")
    else:
        services = ActionServices(config.actions, config.paths.state, store, notify)
        specs = list(builtin_actions(services))
    try:
        plugins, plugin_errors = discover_entry_points()
    except Exception as exc:  # noqa: BLE001 -- must not stop the daemon
        plugins, plugin_errors = [], [f"action plugins: {exc}"]
    names = {s.name for s in specs}
    for spec in plugins:
        if spec.name in names:
            errors.append(f"action plugin {spec.name!r} ignored: a built-in action has that name")
        else:
            specs.append(spec)
    errors.extend(str(e) for e in plugin_errors)
    return services, specs, errors


def root_owned_problem(path: Path) -> str | None:
    """Why a workflow file (or its directory) could be changed by someone other than root, or None."""
    for target, what in ((path, "file"), (path.parent, "directory")):
        try:
            st = os.stat(target)
        except OSError as exc:
            return f"cannot check the {what}: {exc.strerror}"
        if st.st_uid != 0:
            return f"refused: the {what} {target} is owned by uid {st.st_uid}, not root (it would run as root)"
        if st.st_mode & 0o022:
            return f"refused: the {what} {target} is writable by group or others (it would run as root)"
    return None


def load_workflows(config: Config, actions: Any) -> tuple[dict[str, Workflow], list[str]]:
    """Every workflow of `paths.workflows` (later dirs override the same id) and every problem found.

    In system mode a file or directory writable by anyone but root is refused: its steps run as root."""
    from .engine import WorkflowValidationError, loader

    require_root = not config.user_mode and os.geteuid() == 0
    if hasattr(loader, "load_workflow_dirs"):
        found, issues = loader.load_workflow_dirs(config.paths.workflows, actions, require_root_owned=require_root)
        return dict(found), [str(i) for i in issues]
    workflows: dict[str, Workflow] = {}
    problems: list[str] = []
    for directory in config.paths.workflows:
        if not directory.is_dir():
            continue
        for path in sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml")):
            if require_root and (why := root_owned_problem(path)):
                problems.append(f"{path}: {why}")
                continue
            try:
                wf = loader.load_workflow(path, actions)
            except WorkflowValidationError as exc:
                problems.extend(str(i) for i in exc.issues)
                continue
            except Exception as exc:  # noqa: BLE001 -- unreadable, bad YAML: named with the file
                problems.append(f"{path}: {exc}")
                continue
            workflows[wf.workflow_id] = wf
    return workflows, problems
