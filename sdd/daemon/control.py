"""The daemon's facade: what the socket API and the D-Bus bridge call — `status`, `submit_detection`,
`start_run`, `cancel_run`, `restore_quarantine`, `reload` — each checked, done through the daemon's
components, and audited with the caller's uid. Mixed into `Daemon`, whose attributes it uses."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from sdd import __version__
from sdd.config import Config, ConfigError, load_config
from sdd.daemon.loading import freeze_long_lived, load_workflows
from sdd.dispatch.dispatcher import external_id
from sdd.engine import Workflow, WorkflowEngine
from sdd.errors import DaemonError, InvalidRequest, NotAccepting, UnknownRun, UnknownWorkflow
from sdd.intake.spool import SpoolRejection, parse_detection
from sdd.intake.watch import Intake
from sdd.logging import kv, setup_logging
from sdd.sdnotify import Notifier

if TYPE_CHECKING:
    from sdd.dispatch.dispatcher import Dispatcher
    from sdd.dispatch.scheduler import Scheduler
    from sdd.fleet import Fleet

log = logging.getLogger("sdd.daemon")

RECORD_WAIT = 10.0  # seconds runs.start waits for the run's row before replying anyway


class DaemonState(str, Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"

    def __str__(self) -> str:
        return self.value


class DaemonFacade:
    # Owned by `Daemon` (see there).
    config: Config
    config_path: str | os.PathLike[str] | None
    notifier: Notifier
    dispatcher: Dispatcher
    engine: WorkflowEngine
    store: Any
    services: Any
    bus: Any
    intake: Intake | None
    scheduler: Scheduler | None
    workflows: dict[str, Workflow]
    workflow_errors: list[str]
    stats: dict[str, int]
    fleet: Fleet
    started_at: float
    _started_mono: float
    _action_specs: list[Any]

    state: DaemonState

    @property
    def stopping(self) -> bool:
        return self.state is DaemonState.STOPPING

    @property
    def running(self) -> bool:
        return self.state is DaemonState.RUNNING

    def _status_line(self) -> str:
        active = len(self.engine.active_runs) if self.engine else 0
        return (f"{self.state.value}: {active} active runs, {self.dispatcher.queued} queued, "
                f"{len(self.workflows)} workflows")

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
            "queued_detections": self.dispatcher.queued,
            "workflows": len(self.workflows),
            "workflow_errors": list(self.workflow_errors),
            "guards": guards,
            "bus": {"spec": self.config.dbus.bus, "connected": bool(getattr(self.bus, "connected", False)),
                    "state": str(getattr(getattr(self.bus, "state", None), "value", "disabled"))},
            "socket": str(self.config.paths.socket),
            "database": str(self.config.database),
            "spool": str(self.config.paths.spool),
            "intake": {"paused": self.dispatcher.paused, **(self.intake.stats if self.intake else {})},
            "user_mode": self.config.user_mode,
            "stats": dict(self.stats),
            "export": self.fleet.status(),
        }

    async def submit_detection(self, data: Mapping[str, Any], uid: int | None = None, *,
                               spool_name: str | None = None, source: str = "api") -> dict[str, Any]:
        """A detection from the API (or pushed over NATS) rather than the spool: same checks, same path.
        `spool_name` names where it came from, as a spool file's name does, so the same message delivered
        again is recognised as a replay (`AddedDetection.replayed`) and runs once."""
        if self.stopping:
            raise NotAccepting("sdd is stopping")
        detection = checked_detection(data)
        try:
            added = await self.store.record_detection(detection, spool_name=spool_name)
        except ValueError as exc:
            raise InvalidRequest(f"detection: {exc}") from None
        self.dispatcher.accepted(added, detection, source)
        await self._audit(uid, "detections.submit", detection.get("file_path"), str(added.detection_id), None,
                          "accepted", {"type": detection.get("type")})
        self.dispatcher.update_pause()
        self.dispatcher.wake.set()
        return {"detection_id": str(added.detection_id), "external_id": external_id(detection),
                "state": str(added.state),
                "duplicate_of": None if added.duplicate_of is None else str(added.duplicate_of)}

    async def start_run(self, workflow_id: str, context: Mapping[str, Any] | None = None, dry_run: bool = False,
                        uid: int | None = None, detection: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Starts a workflow by hand, optionally as if `detection` (checked like a spool file) had arrived.

        A dry run is the engine's plan and nothing else: no run is started, recorded or counted."""
        wf = self.workflows.get(workflow_id)
        if wf is None:
            raise UnknownWorkflow(f"no workflow {workflow_id!r}")
        if context is not None and not isinstance(context, Mapping):
            raise InvalidRequest("context: expected a map")
        det = None if detection is None else checked_detection(detection)
        if dry_run:
            plan = self.engine.plan(wf, context, det)
            return {"run_id": None, "workflow_id": workflow_id, "status": "planned", "dry_run": True,
                    "plan": plan, "detection": det}
        if self.stopping:
            raise NotAccepting("sdd is stopping")
        detection_id = None
        if det is not None:
            # Recorded like any detection (so the run's history and a resume after a crash have it), but as a
            # sample: it claims no producer id (dedup key) and is marked matched by this run from the start.
            try:
                added = await self.store.record_detection(det, state="matched", dedup=False,
                                                          note=f"sample detection given to runs.start of {workflow_id}")
            except ValueError as exc:
                raise InvalidRequest(f"detection: {exc}") from None
            detection_id = str(added.detection_id)
        handle = self.dispatcher.start(wf, context, detection=det, detection_id=detection_id, trigger="api", uid=uid)
        # The reply promises a run `runs.get` can read: wait for its row to be queued (the engine announces the
        # run from its own task), then for a write queued after it to commit.
        recorded = self.dispatcher.when_recorded(handle.run_id)
        try:
            await asyncio.wait_for(recorded, RECORD_WAIT)
        except TimeoutError:
            log.warning("a started run was not recorded in time", extra=kv(run_id=handle.run_id))
        await self._audit(uid, "runs.start", workflow_id, detection_id, handle.run_id, "started",
                          {"detection": detection_id is not None})
        if uid is None:
            await self.store.flush()
        return {"run_id": handle.run_id, "workflow_id": workflow_id, "status": "running", "dry_run": False,
                "detection_id": detection_id, "external_id": external_id(det)}

    async def cancel_run(self, run_id: str, uid: int | None = None) -> bool:
        handle = self.engine.active_runs.get(run_id)
        if handle is None:
            if self.store is not None and self.store.get_run(run_id) is None:
                raise UnknownRun(f"no run {run_id!r}")
            return False
        ok = handle.cancel()
        await self._audit(uid, "runs.cancel", run_id, None, run_id, "cancelled" if ok else "already finished", {})
        return ok

    async def restore_quarantine(self, qid: str, on_conflict: str = "fail", uid: int | None = None, *,
                                 force: bool = False) -> dict[str, Any]:
        spec = self.engine.registry.get("restore_file")
        if spec is None:
            raise DaemonError("restore_file action is not available")
        result = await spec.handler(quarantine_id=qid, on_conflict=on_conflict, force=force, context={})
        already = isinstance(result, dict) and bool(result.get("already_restored"))
        await self._audit(uid, "quarantine.restore", qid, None, None, "already restored" if already else "restored",
                          {"on_conflict": on_conflict, "force": force,
                           "restored_path": result.get("restored_path") if isinstance(result, dict) else None})
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
        freeze_long_lived()  # the replaced workflows become collectable, the new ones are frozen
        log.info("reloaded", extra=kv(workflows=len(workflows)))
        self.notifier.ready(self._status_line())
        await self._audit(uid, "reload", None, None, None, "ok", {"workflows": len(workflows)})
        self.dispatcher.wake.set()
        return {"ok": True, "errors": [], "workflows": len(workflows)}

    def _apply_config(self, new: Config) -> None:
        old = self.config
        for section in ("paths", "api", "dbus", "actions"):
            if getattr(old, section) != getattr(new, section):
                log.warning("config change takes effect after a restart", extra=kv(section=section))
        self.config = replace(old, engine=new.engine, intake=new.intake, logging=new.logging)
        self.dispatcher.dedup.window = new.engine.dedup_window
        if new.logging != old.logging:
            setup_logging(new.logging.level, new.logging.target)
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


def checked_detection(data: Mapping[str, Any]) -> dict[str, Any]:
    """A detection that came in a request, judged exactly as a spool file would be (the same checks, the same
    reasons); InvalidRequest says what is wrong."""
    try:
        raw = json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except ValueError as exc:
        reason = "a number is out of range (NaN or infinity)" if "Out of range float" in str(exc) else str(exc)
        raise InvalidRequest(f"detection: {reason}") from None
    except (TypeError, RecursionError) as exc:
        raise InvalidRequest(f"detection: {exc}") from None
    try:
        return parse_detection(raw)
    except SpoolRejection as exc:
        raise InvalidRequest(f"detection: {exc}") from None
