"""The daemon's control: what the socket API and the NATS intake may ask of it — `status`,
`submit_detection`, `start_run`, `cancel_run`, `restore_quarantine`, `reload` — each checked, done through
the part that owns it (the dispatcher commits and starts, the engine cancels and plans, the daemon reloads),
and audited with the caller's uid. It implements `sdd.api.control.Control`; the daemon composes it from its
parts once they exist."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sdd.config import Config
from sdd.dispatch.dispatcher import Dispatcher, Lifecycle
from sdd.engine import Workflow, WorkflowEngine
from sdd.errors import DaemonError, InvalidRequest, NotAccepting, UnknownRun, UnknownWorkflow
from sdd.hub import EventHub
from sdd.intake.spool import SpoolRejection, parse_detection
from sdd.labels import external_id
from sdd.logging import kv
from sdd.store import Store

log = logging.getLogger("sdd.daemon")

RECORD_WAIT = 10.0  # seconds runs.start waits for the run's row before replying anyway


class Control:
    def __init__(self, *, life: Lifecycle, config: Config, store: Store, hub: EventHub, engine: WorkflowEngine,
                 dispatcher: Dispatcher, status: Callable[[], dict[str, Any]],
                 reload: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self.life = life
        self.config = config      # the daemon replaces it on reload
        self.store = store
        self.hub = hub
        self.engine = engine
        self.dispatcher = dispatcher
        self._status = status
        self._reload = reload

    @property
    def workflows(self) -> Mapping[str, Workflow]:
        return self.engine.workflows

    def status(self) -> dict[str, Any]:
        return self._status()

    async def submit_detection(self, data: Mapping[str, Any], uid: int | None = None, *,
                               spool_name: str | None = None, source: str = "api") -> dict[str, Any]:
        """A detection from the API (or pushed over NATS) rather than the spool: same checks, same path."""
        if self.life.stopping:
            raise NotAccepting("sdd is stopping")
        detection = checked_detection(data)
        try:
            added = await self.dispatcher.submit(detection, spool_name=spool_name, source=source)
        except ValueError as exc:
            raise InvalidRequest(f"detection: {exc}") from None
        await self._audit(uid, "detections.submit", detection.get("file_path"), str(added.detection_id), None,
                          "accepted", {"type": detection.get("type")})
        return {"detection_id": str(added.detection_id), "external_id": external_id(detection),
                "state": str(added.state),
                "duplicate_of": None if added.duplicate_of is None else str(added.duplicate_of)}

    async def start_run(self, workflow_id: str, context: Mapping[str, Any] | None = None, dry_run: bool = False,
                        uid: int | None = None, detection: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Starts a workflow by hand, optionally as if `detection` (checked like a spool file) had arrived.

        A dry run is the engine's plan and nothing else: no run is started, recorded or counted."""
        wf = self.engine.workflows.get(workflow_id)
        if wf is None:
            raise UnknownWorkflow(f"no workflow {workflow_id!r}")
        if context is not None and not isinstance(context, Mapping):
            raise InvalidRequest("context: expected a map")
        det = None if detection is None else checked_detection(detection)
        if dry_run:
            plan = self.engine.plan(wf, context, det)
            return {"run_id": None, "workflow_id": workflow_id, "status": "planned", "dry_run": True,
                    "plan": plan, "detection": det}
        try:
            started = await self.dispatcher.start_requested(wf, context, det, uid)
        except ValueError as exc:
            raise InvalidRequest(f"detection: {exc}") from None
        handle, detection_id = started.handle, started.detection_id
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
            if self.store.get_run(run_id) is None:
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
        """Re-reads config and workflows (the daemon's reload: all or nothing), audited."""
        result = await self._reload()
        if result["ok"]:
            await self._audit(uid, "reload", None, None, None, "ok", {"workflows": result["workflows"]})
        else:
            await self._audit(uid, "reload", None, None, None, "refused", {"errors": result["errors"][:50]})
        return result

    async def _audit(self, uid: int | None, action: str, target: Any, detection_id: str | None,
                     run_id: str | None, outcome: str, details: dict[str, Any]) -> None:
        if uid is None:
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


__all__ = ["Control", "checked_detection"]
