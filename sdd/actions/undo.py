"""`restore_detection`: undo what one detection's runs quarantined — the action behind an undo request
(a detection of type `undo` naming in `undo_of` the detection to undo, as `sdd-ingest --format wazuh` writes
for Wazuh's `delete` / `disable`).

An undo request is a claim, and a producer's timer running out is no verdict that a file is clean. So the
action restores only what it can show is that detection's own doing, and keeps everything another detection
vouches for:

1. `undo_of` must name a detection in the history that is not itself an undo, from the same `source` as the
   request (a Wazuh undo cannot restore what ClamAV quarantined); its runs must have ended.
2. The items are those its runs put in the vault (the quarantine index's `run_id`), not items another run
   had quarantined first (those stay under that run's name).
3. An item is kept, and listed with the reason, when any other detection named the same file (another
   producer, or another alert of the same one): restoring it would undo that detection too.
4. Each remaining item is restored by `restore_file` with its rules (the directory it left, owner, mode,
   times, `on_conflict` default `fail`: never over a file that is there now), audited as every restore is.

Nothing else is undone: a process killed stays dead, a notification stays sent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sdd.engine.statuses import TERMINAL_RUN_STATUSES
from sdd.executor.restoring import ON_CONFLICT

from . import runinfo
from .errors import ActionError, Conflict, Forbidden, InvalidParams, NotFound
from .files import restore_file
from .params import Params
from .services import ActionServices


@dataclass
class UndoPlan:
    """What an undo request would restore, and what it keeps with why."""

    detection_id: str
    runs: list[str]
    restore: list[dict[str, Any]] = field(default_factory=list)
    keep: list[dict[str, Any]] = field(default_factory=list)
    already: list[dict[str, Any]] = field(default_factory=list)


def _item(row: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"quarantine_id": row["id"], "original_path": row["original_path"], "sha256": row["sha256"], **more}


def plan_undo(store: Any, undo_of: str, request: Any) -> UndoPlan:
    """Decide from the history what undoing `undo_of` restores (pure reads; raises when it may not be undone)."""
    original = store.find_detection(undo_of)
    if original is None:
        raise NotFound(f"restore_detection: no detection with id {undo_of!r:.200} in the history; nothing undone")
    data = original.get("data") if isinstance(original.get("data"), dict) else {}
    if original.get("type") == "undo":
        raise Forbidden(f"restore_detection: {undo_of!r:.200} is itself an undo request; an undo is not undone")
    theirs, ours = data.get("source"), request.get("source")
    if theirs != ours:
        raise Forbidden(f"restore_detection: the undo request comes from source {ours!r:.80}, detection "
                        f"{undo_of!r:.200} from {theirs!r:.80}; a producer undoes only its own detections")
    detection_id = original["detection_id"]
    runs = store.runs_for_detection(detection_id)
    busy = [r["run_id"] for r in runs if r["status"] not in TERMINAL_RUN_STATUSES]
    if busy:
        raise ActionError(f"restore_detection: detection {detection_id}'s run(s) {', '.join(busy)} have not ended; "
                          f"undoing now could race them")
    plan = UndoPlan(detection_id, [r["run_id"] for r in runs])
    seen: set[str] = set()
    for run in runs:
        for row in store.find_quarantine(run_id=run["run_id"], include_restored=True):
            if row["id"] in seen:
                continue
            seen.add(row["id"])
            if row.get("restored_at") is not None:
                plan.already.append(_item(row, restored_to=row.get("restored_to")))
                continue
            others = [d for d in store.detections_of_file(row["original_path"])
                      if d["detection_id"] != detection_id and d.get("duplicate_of") != detection_id
                      and d.get("type") != "undo"]
            if others:
                o = others[0]
                source = (o.get("data") or {}).get("source") if isinstance(o.get("data"), dict) else None
                plan.keep.append(_item(row, reason=f"detection {o['detection_id']} (type {o.get('type')}"
                                                   f"{', source ' + str(source) if source else ''}) also named "
                                                   f"this file; it stays quarantined"))
                continue
            plan.restore.append(_item(row))
    return plan


async def restore_detection(services: ActionServices, *, context: dict[str, Any] | None = None,
                            **params: Any) -> dict[str, Any]:
    p = Params("restore_detection", params)
    request = runinfo.detection(context)
    undo_of = p.string("undo_of", max_len=1024) or runinfo.text(request.get("undo_of"), 1024)
    if not undo_of:
        raise InvalidParams("restore_detection: no undo_of: give it, or run on a detection of type undo")
    on_conflict = p.string("on_conflict", default="fail", choices=ON_CONFLICT) or "fail"
    if services.store is None:
        raise ActionError("restore_detection: needs the history database to know what the detection's runs "
                          "quarantined", retryable=False)
    plan = await asyncio.to_thread(plan_undo, services.store, undo_of, request)
    out: dict[str, Any] = {"undo_of": undo_of, "detection_id": plan.detection_id, "runs": plan.runs,
                           "kept": plan.keep, "already_restored": plan.already}
    if runinfo.dry_run():
        return {**out, "dry_run": True, "would_restore": plan.restore, "restored": []}
    restored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for item in plan.restore:
        try:
            done = await restore_file(services, context=context, quarantine_id=item["quarantine_id"],
                                      on_conflict=on_conflict)
        except (Conflict, Forbidden, NotFound) as exc:
            failed.append({**item, "error": str(exc)})
            continue
        restored.append({**item, "restored_path": done["restored_path"],
                         "already_restored": done["already_restored"]})
    out.update(restored=restored, failed=failed)
    if failed:
        names = "; ".join(f"{f['original_path']}: {f['error']}" for f in failed)
        raise ActionError(f"restore_detection: {len(failed)} of {len(plan.restore)} item(s) not restored "
                          f"({names[:1500]}); restored: {', '.join(r['original_path'] for r in restored) or 'none'}",
                          retryable=False)
    return out


__all__ = ["UndoPlan", "plan_undo", "restore_detection"]
