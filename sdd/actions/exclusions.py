"""The false-positive path: `add_exclusion`, `remove_exclusion`, `log_false_positive`.

An exclusion (a SHA-256 or an absolute path) makes the matcher drop detections of it; the store holds
them. Without a store (tests, tools) they are kept in `ActionServices.memory_*` and logged, so a workflow
behaves the same but nothing persists.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from . import runinfo
from .errors import ActionError, InvalidParams
from .params import Params
from .services import ActionServices

log = logging.getLogger("sdd.actions")


def _targets(p: Params) -> list[tuple[str, str]]:
    sha = p.sha256("sha256")
    path = p.abs_path("path", required=False)
    if path is None and p.present("file_path"):
        path = p.abs_path("file_path")
    out = [(k, v) for k, v in (("sha256", sha), ("path", path)) if v is not None]
    if not out:
        raise InvalidParams(f"{p.action}: give sha256 or path")
    return out


def _actor(p: Params) -> str:
    return p.string("actor", default=None, max_len=256) or "workflow"


async def add_exclusion(services: ActionServices, *, context: dict[str, Any] | None = None,
                        **params: Any) -> dict[str, Any]:
    p = Params("add_exclusion", params)
    targets = _targets(p)
    reason = p.string("reason", default="", max_len=4096) or ""
    actor = _actor(p)
    if runinfo.dry_run():
        return {"dry_run": True, "would": f"exclude {targets}"}
    for kind, value in targets:
        if services.store is not None:
            try:
                await services.store.add_exclusion(kind, value, reason, actor)
            except Exception as exc:
                raise ActionError(f"add_exclusion: could not store {kind} {value}: {exc}") from exc
        else:
            services.memory_exclusions.add((kind, value))
        log.info("exclusion added: %s %s (%s) by %s", kind, value, reason, actor)
    return {"excluded": [{"kind": k, "value": v} for k, v in targets], "reason": reason}


async def remove_exclusion(services: ActionServices, *, context: dict[str, Any] | None = None,
                           **params: Any) -> dict[str, Any]:
    p = Params("remove_exclusion", params)
    targets = _targets(p)
    actor = _actor(p)
    if runinfo.dry_run():
        return {"dry_run": True, "would": f"remove exclusion {targets}"}
    removed = []
    for kind, value in targets:
        if services.store is not None:
            try:
                result = await services.store.remove_exclusion(kind, value, actor)
            except Exception as exc:
                raise ActionError(f"remove_exclusion: could not remove {kind} {value}: {exc}") from exc
            was = bool(result) if result is not None else True
        else:
            was = (kind, value) in services.memory_exclusions
            services.memory_exclusions.discard((kind, value))
        removed.append({"kind": kind, "value": value, "existed": was})
    return {"removed": removed}


async def log_false_positive(services: ActionServices, *, context: dict[str, Any] | None = None,
                             **params: Any) -> dict[str, Any]:
    p = Params("log_false_positive", params)
    det = runinfo.detection(context)
    record = {
        "detection_id": p.string("detection_id", max_len=256) or runinfo.text(det.get("id"), 256),
        "file_path": p.abs_path("file_path", required=False) or runinfo.text(det.get("file_path"), 4096),
        "sha256": p.sha256("sha256"),
        "threat_name": p.string("threat_name", max_len=512) or runinfo.text(det.get("threat_name")),
        "quarantine_id": p.string("quarantine_id", max_len=64),
        "reason": p.string("reason", default="", max_len=4096),
        "reported_by": p.string("reported_by", default="workflow", max_len=256),
        "logged_at": time.time(),
    }
    if runinfo.dry_run():
        return {"dry_run": True, "would": "log a false positive", **record}
    if services.store is not None:
        try:
            run_id, _, _ = runinfo.ids()
            await services.store.log_false_positive(
                record["detection_id"], run_id=run_id, sha256=record["sha256"], file_path=record["file_path"],
                threat_name=record["threat_name"], reason=record["reason"], actor=record["reported_by"],
                details={"quarantine_id": record["quarantine_id"]})
        except Exception as exc:
            raise ActionError(f"log_false_positive: could not store the record: {exc}") from exc
    else:
        services.memory_false_positives.append(record)
    log.warning("false positive: %s", record)
    return {"logged": True, **record}
