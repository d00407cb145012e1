"""The `Daemon`: its lifecycle, and the bridge from engine events to the hub (API subscribers, D-Bus) and
to systemd's status line.

Life reads top-down: `serve()` → `startup()` → wait for a stop request → `shutdown()`. Signals only flip a
flag or schedule a reload. What happens to a detection is the dispatcher's (`dispatch.py`); what callers
can ask of the daemon is the facade's (`facade.py`); loading actions and workflows is `loading.py`'s.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import time
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any

from sdd import __version__
from sdd import hub as events
from sdd.config import Config
from sdd.daemon.control import DaemonFacade, DaemonState
from sdd.daemon.loading import freeze_long_lived, load_actions, load_workflows, reads_run_log
from sdd.dispatch.dispatcher import Dispatcher, RunOrigin, WatchedStore
from sdd.dispatch.scheduler import Scheduler
from sdd.engine import Workflow, WorkflowEngine
from sdd.engine.events import EngineEvent, RunFinished, RunStarted, StepFinished, StepStarted, StepWaiting
from sdd.fleet import Fleet
from sdd.history.recovery import recover_runs
from sdd.hub import EventHub
from sdd.intake.watch import Intake
from sdd.logging import LogEvent, kv, story
from sdd.sdnotify import Notifier, watchdog_interval

log = logging.getLogger("sdd.daemon")

PURGE_INTERVAL = 86400.0    # retention purge, daily
_BY_HAND = RunOrigin(trigger="api")  # a run the dispatcher did not start (tests, an engine used directly)


class Daemon(DaemonFacade):
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
        self._action_specs: list[Any] = []
        self.recorder: Any = None
        self.workflows: dict[str, Workflow] = {}
        self.workflow_errors: list[str] = []
        self.intake: Intake | None = None
        self.scheduler: Scheduler | None = None
        self.api: Any = None
        self.bus: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._first_scan = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._status_pending = False
        self._status_sent = 0.0
        self._status_last = ""
        self._status_timer: asyncio.TimerHandle | None = None
        self._status_published: tuple[int, int, str] | None = None
        self._instance_lock: int | None = None
        self.run_log: Any = None      # the actions' RunLog (what reports read), fed the events of runs that read it
        self._logged_runs: set[str] = set()                    # runs whose events go to the run log
        # Runs with a step a guard holds (StepWaiting): the dispatcher does not count them against
        # max_concurrent_runs (up to a bound), so steps waiting for a kill slot cannot starve new quarantines.
        self.waiting_runs: set[str] = set()
        self._reads_log: dict[int, tuple[Workflow, bool]] = {}  # workflow object → reads_run_log() of it
        self.dispatcher = Dispatcher(self)
        self.fleet = Fleet(config, __version__)
        self.stats = {"received": 0, "rejected": 0, "duplicates": 0, "excluded": 0, "no_match": 0,
                      "runs_started": 0, "runs_finished": 0}

    # ---- lifecycle ------------------------------------------------------------------------------------------
    async def serve(self) -> int:
        """Runs until SIGTERM/SIGINT (or `request_stop()`); returns the exit status."""
        from sdd.api.errors import AlreadyRunning

        try:
            await self.startup()
        except AlreadyRunning as exc:
            log.error("sdd is already running; not starting a second one", extra=kv(reason=exc))
            await self._close_resources()
            return 1
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
        # Before anything else: a second daemon on the same socket must not touch the store (its crash
        # recovery would resume the first one's runs) nor the spool.
        self._instance_lock = self._claim_instance()
        os.makedirs(cfg.paths.state, mode=0o700, exist_ok=True)
        from sdd.history.recorder import HistoryRecorder
        from sdd.store import Store

        raw_store = Store.open(cfg.database)
        self.store = WatchedStore(raw_store)
        await self.fleet.attach(raw_store, self.spawn)  # before anything is recorded: all of it is exported
        self.services, actions, action_errors = load_actions(cfg, self.store, self._desktop_notification)
        self._action_specs = actions
        self.run_log = getattr(self.services, "run_log", None)
        if self.services is not None:
            self.services.run_labels = self._run_labels
            self.services.on_guard_trip = lambda trip: self.threadsafe(self._guard_tripped, trip)
        for err in action_errors:
            log.error("action plugin not loaded", extra=kv(error=err))
        self.workflows, issues = load_workflows(cfg, actions)
        self.workflow_errors = [str(i) for i in issues]
        for issue in self.workflow_errors:
            log.error("workflow not loaded", extra=kv(issue=issue))
        self.recorder = HistoryRecorder(raw_store, on_run_recorded=self.dispatcher.run_recorded)
        # template_dirs=(): in the daemon a sub-workflow comes only from the configured (checked) workflow dirs.
        self.engine = WorkflowEngine(actions, listeners=[self._on_engine_event], workflows=self.workflows,
                                     template_dirs=(),
                                     max_depth=cfg.engine.max_subworkflow_depth)
        log.info("workflows loaded", extra=kv(count=len(self.workflows), errors=len(self.workflow_errors)))
        self.fleet.observe(self.engine, self.dispatcher, self.spawn)

        report = await recover_runs(self.store, self.engine, self.recorder.prior_steps,
                                    before_start=self.dispatcher.expect_resumed_run)
        if report.resumed or report.abandoned:
            log.info("crash recovery", extra=kv(**report.to_dict()))
        self.dispatcher.queued = int(self.store.counts().get("queued_detections", 0))
        # Runs from before this start inside the dedup window: memory cannot know them, the history can.
        window = cfg.engine.dedup_window
        self.dispatcher.history_dedup = window > 0 and bool(
            self.store.list_runs(limit=1, since=time.time() - window).items)

        self._install_signals()
        await self._start_api()
        await self._start_bus()
        # Claimed-but-uncommitted files count towards the queue bound too, so the two limits are coupled:
        # at most about 2 x max_queued detections exist between new/ and a run.
        batch = max(1, min(256, cfg.intake.max_queued))
        self.intake = Intake(cfg.paths.spool, self.dispatcher.deliver, max_file_size=cfg.intake.max_file_size,
                             rescan_interval=cfg.intake.rescan_interval, batch_size=batch,
                             max_inflight=max(batch, min(2048, cfg.intake.max_queued)),
                             on_first_scan=lambda: self.threadsafe(self._first_scan.set))
        self.dispatcher.update_pause()
        self.intake.start()
        self.spawn(self.dispatcher.run(), "dispatcher")
        self.dispatcher.wake.set()
        await self._first_scan.wait()
        self.scheduler = Scheduler(self.dispatcher.launch_scheduled)
        self.scheduler.update(self.workflows)
        await self.fleet.start(self.spawn, submit=self.submit_detection, paused=lambda: self.dispatcher.paused,
                               publish=self.hub.publish)
        interval = watchdog_interval()
        if interval:
            self.spawn(self._watchdog_loop(interval), "watchdog")
        self.spawn(self._purge_loop(), "retention")
        freeze_long_lived()
        self.state = DaemonState.RUNNING
        self.notifier.ready(self._status_line())
        self.publish_status()
        log.info("sdd ready", extra=kv(version=__version__, pid=os.getpid(), spool=cfg.paths.spool,
                                       socket=cfg.paths.socket, workflows=len(self.workflows),
                                       user_mode=cfg.user_mode))

    async def shutdown(self) -> None:
        """Stop claiming, let runs finish within the grace period, then interrupt the rest; flush the store."""
        self.state = DaemonState.STOPPING
        log.info("stopping", extra=kv(active_runs=len(self.engine.active_runs) if self.engine else 0))
        self.notifier.stopping("stopping: draining runs")
        self.publish_status()
        if self.scheduler is not None:
            self.scheduler.stop()
        await self.fleet.stop_intake()
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

    def _claim_instance(self) -> int | None:
        """The socket's lock file, held for the daemon's life (None under socket activation, where systemd
        starts one instance). Raises AlreadyRunning when another sdd holds it or answers on the socket."""
        from sdd.sdnotify import listen_fds

        if listen_fds(unset=False):
            return None
        from sdd.api.listener import answers_ping, lock

        path = self.config.paths.socket
        fd = lock(path)
        if answers_ping(path):
            os.close(fd)
            from sdd.api.errors import AlreadyRunning
            raise AlreadyRunning(f"another sdd is already answering on {path}")
        return fd

    async def _close_resources(self) -> None:
        try:
            await self.fleet.close()
        except Exception as exc:  # noqa: BLE001 -- must not stop the shutdown
            log.warning("fleet parts did not stop cleanly", extra=kv(error=exc))
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
        if self._instance_lock is not None:
            os.close(self._instance_lock)
            self._instance_lock = None

    async def _settle_commits(self) -> None:
        commits = [t for t in self._tasks if t.get_name() == "commit"]
        if commits:
            await asyncio.wait(commits, timeout=30)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.spawn(self.reload(None), "reload"))

    async def _start_api(self) -> None:
        try:
            from sdd.api import ApiServer  # lands separately; the daemon works without it
        except ImportError as exc:
            log.warning("socket API not available", extra=kv(error=exc))
            return
        from sdd.api.errors import AlreadyRunning

        # The listener takes the lock over (and closes it, whether it binds or fails to).
        api = ApiServer(self, lock_fd=self._instance_lock)
        self._instance_lock = None
        try:
            await api.start()
        except AlreadyRunning:
            raise  # a second daemon answering on the socket must stop this one before it touches the spool
        except Exception as exc:  # noqa: BLE001 -- the daemon works without its API
            log.error("socket API failed to start; running without it", extra=kv(error=exc))
            return
        self.api = api

    async def _start_bus(self) -> None:
        if self.config.dbus.bus == "none":
            return
        try:
            from sdd.bus import BusBridge
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

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception(), extra=kv(task=task.get_name()))

    def threadsafe(self, fn: Any, *args: Any) -> None:
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
                                                    **result))
            except Exception as exc:  # noqa: BLE001 -- must not stop the daemon
                log.error("history purge failed", extra=kv(error=exc))
            await asyncio.sleep(PURGE_INTERVAL)

    # ---- engine events → run log, history, hub and the log -----------------------------------------------------
    def _on_engine_event(self, ev: EngineEvent) -> Awaitable[None] | None:
        """The run log first (a report step reads it), then history (awaited when it asks: a non-idempotent
        step's intent, a run's final status), then the hub and the log. Synchronous unless the recorder
        returns an awaitable, so most events cost no coroutine."""
        if self.run_log is not None and (ev.run_id in self._logged_runs or type(ev) is RunStarted):
            self._feed_run_log(ev)
        pending = self.recorder(ev)
        if pending is not None and inspect.isawaitable(pending):
            return self._publish_after(pending, ev)
        self._publish_engine_event(ev)
        return None

    def _feed_run_log(self, ev: EngineEvent) -> None:
        if isinstance(ev, RunStarted):
            key = id(ev.workflow)
            cached = self._reads_log.get(key)
            if cached is None or cached[0] is not ev.workflow:
                if len(self._reads_log) > 256:
                    self._reads_log.clear()
                cached = self._reads_log[key] = (ev.workflow, reads_run_log(ev.workflow, self.workflows))
            if not cached[1]:
                return
            self._logged_runs.add(ev.run_id)
            origin = self.dispatcher.runs.get(ev.run_id, _BY_HAND)
            self.run_log(ev)
            self.run_log.label(ev.run_id, detection_id=origin.detection_id, external_id=origin.external_id)
            return
        self.run_log(ev)
        if isinstance(ev, RunFinished):
            self._logged_runs.discard(ev.run_id)

    def _run_labels(self, run_id: str) -> dict[str, Any]:
        """What the actions' log lines say of a run: sdd's detection id and the producer's."""
        origin = self.dispatcher.runs.get(run_id)
        return {} if origin is None else {"detection": origin.detection_id, "external_id": origin.external_id}

    async def _publish_after(self, pending: Awaitable[Any], ev: EngineEvent) -> None:
        await pending
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
            origin = self.dispatcher.runs.get(ev.run_id, _BY_HAND)
            if origin.workflow_id is None:  # resumed by crash recovery, or started around the dispatcher
                origin = self.dispatcher.runs[ev.run_id] = replace(origin, workflow_id=ev.workflow_id)
            publish(events.RUN_STARTED, {"run_id": ev.run_id, "workflow_id": ev.workflow_id,
                                         "detection_id": origin.detection_id, "external_id": origin.external_id})
            if log.isEnabledFor(logging.INFO):
                log.info("run started", extra=story(ev.run_id, ev.workflow_id, origin.detection_id,
                                                    external_id=origin.external_id or "-", trigger=origin.trigger,
                                                    resumed=ev.resumed))
            self.publish_status()
        elif isinstance(ev, RunFinished):
            # Published after the recorder's awaited commit: a subscriber seeing it can trust the history.
            origin = self.dispatcher.runs.pop(ev.run_id, _BY_HAND)
            self.waiting_runs.discard(ev.run_id)
            self.stats["runs_finished"] += 1
            seconds = max(0.0, ev.finished_at - ev.started_at)
            publish(events.RUN_FINISHED, {"run_id": ev.run_id, "workflow_id": ev.workflow_id,
                                          "status": str(ev.status), "seconds": seconds, "error": ev.error,
                                          "detection_id": origin.detection_id, "external_id": origin.external_id})
            level = logging.INFO if ev.status == "completed" else logging.WARNING
            if log.isEnabledFor(level):
                log.log(level, "run finished", extra=story(
                    ev.run_id, ev.workflow_id, origin.detection_id, event=LogEvent.RUN_FINISHED,
                    external_id=origin.external_id or "-",
                    status=str(ev.status), duration=f"{seconds:.3f}s", **({"error": ev.error} if ev.error else {})))
            # The engine drops the handle when the task ends; a free slot is what the dispatcher waits for.
            if self._loop is not None:
                self._loop.call_soon(self.dispatcher.wake.set)
            self.publish_status()
        elif isinstance(ev, StepWaiting):
            self._step_waiting(ev)

    def _step_waiting(self, ev: StepWaiting) -> None:
        if ev.reason is not None:
            self.waiting_runs.add(ev.run_id)
            if self._loop is not None:
                self._loop.call_soon(self.dispatcher.wake.set)  # its run slot may go to the next detection
        else:
            self.waiting_runs.discard(ev.run_id)
        if self.hub.subscriber_count:
            self.hub.publish(events.STEP_WAITING, {"run_id": ev.run_id, "step_id": ev.step_id,
                                                   "waiting": ev.reason is not None, "reason": ev.reason,
                                                   "since": ev.since})

    def _guard_tripped(self, trip: Any) -> None:
        """A guard began holding work back (logged by the guards, once per trip): an event on the stream, a
        desktop Notification (D-Bus), and an audit row."""
        data = trip.to_dict()
        self.hub.publish(events.GUARD_TRIPPED, data)
        title = (f"sdd: rate limit of {trip.action} reached" if trip.action
                 else f"sdd: circuit breaker {trip.guard.removeprefix('breaker:')} open")
        self._desktop_notification(title, trip.reason, "critical")
        if self.store is not None:
            self.spawn(self._audit_trip(trip.guard, data), "audit guard trip")

    async def _audit_trip(self, guard: str, data: dict[str, Any]) -> None:
        try:
            await self.store.audit(None, "guard.tripped", guard, outcome="tripped", details=data)
        except Exception as exc:  # noqa: BLE001 - the trip was logged and announced; a lost row must not matter
            log.warning("could not audit the guard trip", extra=kv(guard=guard, error=exc))

    def _run_fields(self, run_id: str, **more: Any) -> dict[str, Any]:
        origin = self.dispatcher.runs.get(run_id, _BY_HAND)
        return story(run_id, origin.workflow_id, origin.detection_id, **more)

    def _step_retried(self, ev: StepStarted) -> None:
        if log.isEnabledFor(logging.WARNING):
            log.warning("step retried", extra=self._run_fields(ev.run_id, step=ev.step_id, attempt=ev.attempt,
                                                               action=ev.action or "-"))

    def _step_outcome(self, ev: StepFinished) -> None:
        """One line per failed step, and per rollback (done or failed)."""
        if ev.phase == "rollback":
            if ev.status == "failed":
                log.error("rollback failed", extra=self._run_fields(ev.run_id, step=ev.step_id, error=ev.error))
            else:
                log.warning("step rolled back", extra=self._run_fields(ev.run_id, step=ev.step_id,
                                                                       status=str(ev.status)))
            return
        log.warning("step failed", extra=self._run_fields(ev.run_id, event=LogEvent.STEP_FAILED, step=ev.step_id,
                                                          status="failed", attempts=ev.attempts, error=ev.error))

    def _desktop_notification(self, title: str, body: str, urgency: str) -> str | None:
        """Hands a desktop notification to the D-Bus bridge. None when it went out as a signal on the bus under
        sdd's name; else why it reached no one (the action reports it as not delivered)."""
        reason = self._bus_undeliverable()
        if reason is None:
            self.hub.publish(events.NOTIFICATION, {"title": title, "body": body, "urgency": urgency})
        return reason

    def _bus_undeliverable(self) -> str | None:
        spec = self.config.dbus.bus
        if spec == "none":
            return 'D-Bus is off (dbus.bus = "none"): there is no desktop to notify'
        bus = self.bus
        if bus is None:
            return "the D-Bus bridge is not running (see the daemon's log)"
        if not bus.connected:
            why = getattr(bus, "last_error", None)
            return f"not connected to the {spec} bus" + (f" ({why})" if why else "")
        if not getattr(bus, "owns_name", True):
            return ("another connection owns the name org.searchanddestroy.Sdd1 on the bus, so notifiers "
                    "listening to sdd do not see its signals")
        return None

    def publish_status(self) -> None:
        # Coalesced: one status.changed per loop iteration however many runs start or end in it.
        if self._status_pending or self._loop is None:
            return
        self._status_pending = True
        self._loop.call_soon(self._emit_status)

    def _emit_status(self) -> None:
        self._status_pending = False
        now = (len(self.engine.active_runs) if self.engine else 0, self.dispatcher.queued, self.state.value)
        if now != self._status_published:  # one status.changed per change, none for a wake-up that changed nothing
            self._status_published = now
            self.hub.publish(events.STATUS_CHANGED, {"active_runs": now[0], "queued_detections": now[1],
                                                     "state": now[2]})
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


__all__ = ["Daemon", "DaemonState"]
