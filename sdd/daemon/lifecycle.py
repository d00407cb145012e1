"""The `Daemon`: its lifecycle, which builds and wires the parts, and systemd's status line.

Life reads top-down: `serve()` → `startup()` → wait for a stop request → `shutdown()`. Signals only flip a
flag or schedule a reload. What happens to a detection is the dispatcher's (`sdd/dispatch/dispatcher.py`);
what callers can ask of the daemon is the `Control`'s (`control.py`), composed here from the parts it uses;
engine events reach the history and the hub through `reporting.py`; loading actions and workflows is
`loading.py`'s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sdd import __version__
from sdd import hub as events
from sdd.actions import ActionServices
from sdd.api import AlreadyRunning, ApiServer
from sdd.config import Config, ConfigError, load_config
from sdd.daemon.control import Control
from sdd.daemon.loading import freeze_long_lived, load_actions, load_workflows
from sdd.daemon.reporting import RunReporter
from sdd.dispatch.dispatcher import Dispatcher, DispatchSettings
from sdd.dispatch.scheduler import Scheduler
from sdd.engine import ActionSpec, Workflow, WorkflowEngine
from sdd.fleet import Fleet
from sdd.history.recorder import HistoryRecorder
from sdd.history.recovery import recover_runs
from sdd.hub import EventHub
from sdd.intake.watch import Intake
from sdd.logging import kv, setup_logging
from sdd.sdnotify import Notifier, watchdog_interval
from sdd.store import Store

if TYPE_CHECKING:
    from sdd.bus.process import BridgeProcess

log = logging.getLogger("sdd.daemon")

PURGE_INTERVAL = 86400.0    # retention purge, daily


class DaemonState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


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
        # Built by startup(), in this order: the store, the actions and workflows, the engine, the dispatcher
        # (its collaborators handed in), the history recorder, the control (what callers may ask), the API,
        # the D-Bus bridge, the intake and the scheduler.
        self.store: Store | None = None
        self.engine: WorkflowEngine
        self.dispatcher: Dispatcher
        self.recorder: HistoryRecorder
        self.reporter: RunReporter    # engine events → run log, history, hub, log lines
        self.control: Control
        self.services: ActionServices | None = None
        self._action_specs: list[ActionSpec] = []
        self.workflows: dict[str, Workflow] = {}
        self.workflow_errors: list[str] = []
        self._reloading = asyncio.Lock()  # reloads one at a time: each applies what it read, in order
        self.intake: Intake | None = None
        self.scheduler: Scheduler | None = None
        self.api: ApiServer | None = None
        self.bus: BridgeProcess | None = None
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
        self.fleet = Fleet(config, __version__)
        self.stats = {"received": 0, "rejected": 0, "duplicates": 0, "excluded": 0, "no_match": 0,
                      "runs_started": 0, "runs_finished": 0}

    @property
    def stopping(self) -> bool:
        return self.state is DaemonState.STOPPING

    @property
    def running(self) -> bool:
        return self.state is DaemonState.RUNNING

    # ---- lifecycle ------------------------------------------------------------------------------------------
    async def serve(self) -> int:
        """Runs until SIGTERM/SIGINT (or `request_stop()`); returns the exit status."""
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
        store = self.store = Store.open(cfg.database)
        await self.fleet.attach(store, self.spawn)  # before anything is recorded: all of it is exported
        self.services, actions, action_errors = load_actions(cfg, store, self._desktop_notification)
        self._action_specs = actions
        if self.services is not None:
            self.services.run_labels = self._run_labels
            self.services.on_guard_trip = lambda trip: self.threadsafe(self._guard_tripped, trip)
        for err in action_errors:
            log.error("action plugin not loaded", extra=kv(error=err))
        self.workflows, issues = load_workflows(cfg, actions)
        self.workflow_errors = [str(i) for i in issues]
        for issue in self.workflow_errors:
            log.error("workflow not loaded", extra=kv(issue=issue))
        # template_dirs=(): in the daemon a sub-workflow comes only from the configured (checked) workflow dirs.
        self.engine = WorkflowEngine(actions, workflows=self.workflows,
                                     template_dirs=(),
                                     max_depth=cfg.engine.max_subworkflow_depth)
        log.info("workflows loaded", extra=kv(count=len(self.workflows), errors=len(self.workflow_errors)))
        self.dispatcher = Dispatcher(store, self.hub, self.engine, self.stats, DispatchSettings.of(cfg), life=self,
                                     spawn=self.spawn, on_change=self.publish_status)
        if self.services is not None:  # (a step waiting on a mail relay, webhook or scanner lets its run's slot go)
            self.services.on_outbound = self.dispatcher.run_outbound
            self.services.set_max_runs(cfg.engine.max_concurrent_runs)
        self.recorder = HistoryRecorder(store, on_run_recorded=self.dispatcher.run_recorded)
        self.reporter = RunReporter(self.engine, self.recorder, self.hub, self.stats,
                                    None if self.services is None else self.services.run_log,
                                    slot_freed=self.dispatcher.run_finished, run_waiting=self.dispatcher.run_waiting,
                                    run_recording=self.dispatcher.run_recording,
                                    on_change=self.publish_status)
        self.engine.add_listener(self.reporter)
        self.control = Control(life=self, config=cfg, store=store, hub=self.hub, engine=self.engine,
                               dispatcher=self.dispatcher, status=self.status, reload=self.reload)
        self.fleet.observe(self.engine, self.dispatcher, self.spawn, scans=self._scans)

        report = await recover_runs(store, self.engine, self.recorder.prior_steps)
        if report.resumed or report.abandoned:
            log.info("crash recovery", extra=kv(**report.to_dict()))
        self.dispatcher.queued = int(store.counts().get("queued_detections", 0))
        # Runs from before this start inside the dedup window: memory cannot know them, the history can.
        window = cfg.engine.dedup_window
        self.dispatcher.history_dedup = window > 0 and bool(
            store.list_runs(limit=1, since=time.time() - window).items)

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
        self.dispatcher.attach_intake(self.intake)
        self.intake.start()
        self.spawn(self.dispatcher.run(), "dispatcher")
        self.dispatcher.wake.set()
        await self._first_scan.wait()
        self.scheduler = Scheduler(self.dispatcher.launch_scheduled)
        self.scheduler.update(self.workflows)
        await self.fleet.start(self.spawn, submit=self.control.submit_detection, paused=lambda: self.dispatcher.paused,
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
        log.info("stopping", extra=kv(active_runs=len(self.engine.active_runs)))
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
        if self.engine.active_runs:
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

    # ---- what the Control reads and does through the daemon: status, reload ----------------------------------
    def _status_line(self) -> str:
        return (f"{self.state.value}: {len(self.engine.active_runs)} active runs, {self.dispatcher.queued} queued, "
                f"{len(self.workflows)} workflows")

    def _scans(self) -> dict[str, int]:
        lane = None if self.services is None else self.services.scans
        return {} if lane is None else {"at_once": lane.limit, "running": lane.busy, "waiting": lane.waiting}

    def status(self) -> dict[str, Any]:
        guards: Any = {}
        if self.services is not None:
            try:
                guards = self.services.guards.status()
            except Exception as exc:  # noqa: BLE001 -- must not stop the daemon
                guards = {"error": str(exc)}
        bus = self.bus
        return {
            "version": __version__,
            "state": self.state.value,
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self._started_mono, 3),
            "started_at": self.started_at,
            "active_runs": len(self.engine.active_runs),
            "run_slots": self.dispatcher.slots(),
            "queued_detections": self.dispatcher.queued,
            "workflows": len(self.workflows),
            "workflow_errors": list(self.workflow_errors),
            "guards": guards,
            # run_scan's steps: scanning now, and waiting for a place among the scans at once (`lending.Lane`)
            "scans": self._scans(),
            "bus": {"spec": self.config.dbus.bus, "connected": bus is not None and bus.connected,
                    "state": "disabled" if bus is None else bus.state.value},
            "socket": str(self.config.paths.socket),
            "database": str(self.config.database),
            # (wall clock) since when commits fail for a full disk and are held and tried again; else None
            "database_full_since": self.store.writer_stats().full_since if self.store is not None else None,
            "spool": str(self.config.paths.spool),
            "intake": {"paused": self.dispatcher.paused, **(self.intake.stats if self.intake else {})},
            "user_mode": self.config.user_mode,
            "stats": dict(self.stats),
            "export": self.fleet.status(),
        }

    async def reload(self) -> dict[str, Any]:
        """Re-reads config and workflows; all or nothing — on any error the running set stays."""
        async with self._reloading:
            self.notifier.reloading()
            # Parsing the workflows is pure Python (~7 ms a template here): in a thread, the daemon goes on
            # handling detections and calls meanwhile.
            new_cfg, workflows, errors = await asyncio.to_thread(self._read_config_and_workflows)
            return self._apply_reload(new_cfg, workflows, errors)

    def _read_config_and_workflows(self) -> tuple[Config | None, dict[str, Workflow], list[str]]:
        try:
            new_cfg = load_config(self.config_path, user=self.config.user_mode)
        except ConfigError as exc:
            return None, {}, list(exc.errors)
        workflows, issues = load_workflows(new_cfg, self._action_specs)
        return new_cfg, workflows, issues

    def _apply_reload(self, new_cfg: Config | None, workflows: dict[str, Workflow],
                      errors: list[str]) -> dict[str, Any]:
        if errors or new_cfg is None:
            for e in errors:
                log.error("reload refused", extra=kv(error=e))
            self.notifier.ready(self._status_line())
            return {"ok": False, "errors": errors, "workflows": len(self.workflows)}
        self._apply_config(new_cfg)
        self.workflows = workflows
        self.workflow_errors = []
        self.engine.set_workflows(workflows)
        if self.scheduler is not None:
            self.scheduler.update(workflows)
        freeze_long_lived()  # the replaced workflows become collectable, the new ones are frozen
        log.info("reloaded", extra=kv(workflows=len(workflows)))
        self.notifier.ready(self._status_line())
        self.dispatcher.wake.set()
        return {"ok": True, "errors": [], "workflows": len(workflows)}

    def _apply_config(self, new: Config) -> None:
        old = self.config
        for section in ("paths", "api", "dbus", "actions"):
            if getattr(old, section) != getattr(new, section):
                log.warning("config change takes effect after a restart", extra=kv(section=section))
        self.config = self.control.config = replace(old, engine=new.engine, intake=new.intake, logging=new.logging)
        self.dispatcher.configure(DispatchSettings.of(self.config))
        if self.services is not None:
            self.services.set_max_runs(new.engine.max_concurrent_runs)
        if new.logging != old.logging:
            setup_logging(new.logging.level, new.logging.target)
        if self.intake is not None:
            self.intake.max_file_size = new.intake.max_file_size
            self.intake.rescan_interval = new.intake.rescan_interval

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
            raise AlreadyRunning(f"another sdd is already answering on {path}")
        return fd

    async def _close_resources(self) -> None:
        try:
            await self.fleet.close()
        except Exception as exc:  # noqa: BLE001 -- must not stop the shutdown
            log.warning("fleet parts did not stop cleanly", extra=kv(error=exc))
        stops: list[tuple[str, Callable[[], Awaitable[None]] | None]] = [
            ("API", None if self.api is None else self.api.close), ("D-Bus", None if self.bus is None else self.bus.stop)]
        for name, stop in stops:
            if stop is not None:
                try:
                    await asyncio.wait_for(stop(), 10)
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
        loop.add_signal_handler(signal.SIGHUP, lambda: self.spawn(self.reload(), "reload"))

    async def _start_api(self) -> None:
        # The listener takes the lock over (and closes it, whether it binds or fails to).
        api = ApiServer(self.control, lock_fd=self._instance_lock)
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
        from sdd.bus.process import BridgeProcess  # (its own process: the daemon never loads dbus-next)

        try:
            bridge = BridgeProcess(self.hub, self._bus_properties, self.config.dbus.bus,
                                   log_level=self.config.logging.level, log_target=self.config.logging.target)
            await bridge.start()
        except Exception as exc:  # noqa: BLE001 -- must not stop the daemon
            log.error("D-Bus bridge failed to start; running without it", extra=kv(error=exc))
            return
        self.bus = bridge

    def _bus_properties(self) -> dict[str, Any]:
        """What the bus's properties show (Version, State, ActiveRuns, QueuedDetections), as in status()."""
        return {"version": __version__, "state": self.state.value, "active_runs": len(self.engine.active_runs),
                "queued_detections": self.dispatcher.queued}

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

    def threadsafe(self, fn: Callable[..., None], *args: Any) -> None:
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
                result = await self.control.store.purge(self.config.engine.history_retention_days)
                log.info("history purged", extra=kv(retention_days=self.config.engine.history_retention_days,
                                                    **result))
            except Exception as exc:  # noqa: BLE001 -- must not stop the daemon
                log.error("history purge failed", extra=kv(error=exc))
            await asyncio.sleep(PURGE_INTERVAL)

    def _run_labels(self, run_id: str) -> dict[str, Any]:
        return self.reporter.labels_of(run_id)

    def _guard_tripped(self, trip: Any) -> None:
        """A guard began holding work back (logged by the guards, once per trip): an event on the stream, a
        desktop Notification (D-Bus), and an audit row."""
        data = trip.to_dict()
        self.hub.publish(events.GUARD_TRIPPED, data)
        title = (f"sdd: rate limit of {trip.action} reached" if trip.action
                 else f"sdd: circuit breaker {trip.guard.removeprefix('breaker:')} open")
        self._desktop_notification(title, trip.reason, "critical")
        if self.store is not None:
            self.spawn(self._audit_trip(self.store, trip.guard, data), "audit guard trip")

    @staticmethod
    async def _audit_trip(store: Store, guard: str, data: dict[str, Any]) -> None:
        try:
            await store.audit(None, "guard.tripped", guard, outcome="tripped", details=data)
        except Exception as exc:  # noqa: BLE001 - the trip was logged and announced; a lost row must not matter
            log.warning("could not audit the guard trip", extra=kv(guard=guard, error=exc))

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
        now = (len(self.engine.active_runs), self.dispatcher.queued, self.state.value)
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
