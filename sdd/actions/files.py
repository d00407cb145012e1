"""File actions: `quarantine_file`, `restore_file` (its rollback) and `delete_file`.

Path rules shared by all three: absolute, no `.`/`..`, strictly inside `allowed_roots`, no symlink in any
component (walked with openat + O_NOFOLLOW), regular files only. The vault (`vault.py`) does the byte
work; this module checks parameters, takes the guards and the per-path lock, and keeps the store's index
and audit trail in step with the vault.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sdd.executor import Delete, Lookup, Quarantine, Restore
from sdd.executor.abortable import record
from sdd.executor.paths import under_roots
from sdd.executor.restoring import ON_CONFLICT
from sdd.executor.vault import QID_RE

from . import runinfo
from .errors import ActionError, Forbidden, InvalidParams
from .executing import execute
from .params import Params
from .services import ActionServices

log = logging.getLogger("sdd.actions")


def _checked_path(p: Params, services: ActionServices, name: str = "file_path") -> str:
    path = p.abs_path(name)
    assert path is not None
    if not under_roots(path, services.config.allowed_roots):
        roots = ", ".join(str(r) for r in services.config.allowed_roots) or "(none configured)"
        raise Forbidden(f"{p.action}: {path} is outside the allowed roots ({roots})")
    return path


def _result(meta: dict[str, Any], already: bool) -> dict[str, Any]:
    # dev/ino: the file as the kernel knows it, which kill_process matches once the name is gone.
    return {"quarantine_id": meta["quarantine_id"], "sha256": meta["sha256"],
            "original_path": meta["original_path"], "size": meta["size"],
            "dev": meta.get("dev"), "ino": meta.get("ino"), "already_quarantined": already}


async def _index(services: ActionServices, meta: dict[str, Any]) -> None:
    if services.store is None:
        return
    try:
        # The store's put is an upsert on the vault's id: a repeated call lands on the same row, and a file
        # quarantined again after a restore is shown as quarantined again.
        await services.store.put_quarantine({**meta, "id": meta["quarantine_id"]})
    except Exception as exc:
        # The vault has the item; a re-run finds it there and indexes it again.
        raise ActionError(f"quarantined {meta['original_path']} as {meta['quarantine_id']} but could not "
                          f"index it in the database: {exc}") from exc


async def quarantine_file(services: ActionServices, *, context: dict[str, Any] | None = None,
                          **params: Any) -> dict[str, Any]:
    p = Params("quarantine_file", params)
    path = _checked_path(p, services)
    if p.present("quarantine_dir"):
        # Accepted for the original engine's workflows; the vault's place is configuration, never
        # workflow text (a workflow-chosen vault could be anywhere).
        log.info("quarantine_file: ignoring quarantine_dir=%r; the vault is %s",
                 p.raw["quarantine_dir"], services.vault_dir)
    det = runinfo.detection(context)
    detection_id = p.string("detection_id", max_len=256) or runinfo.text(det.get("id"), 256)
    threat = p.string("threat_name", max_len=512) or runinfo.text(det.get("threat_name"))
    if runinfo.dry_run():
        return {"dry_run": True, "would": f"move {path} into the vault {services.vault_dir}",
                "irreversible": False, "original_path": path}
    run_id, _, _ = runinfo.ids()
    # The rate limit's slot is waited for (the step shows `waiting`) before the path's lock is taken.
    async with services.guard_slot("quarantine_file") as slot, services.lock(path):
        hints = await asyncio.to_thread(index_hints, services, path)
        # Cancelled before its commit point, the copy stops and leaves nothing; after it, the quarantine
        # completes and is recorded here all the same (the engine then carries the cancellation on).
        done = await execute(services, Quarantine(path, detection_id, threat, run_id, hints), slot.use)
    meta, already = done.value["meta"], bool(done.value["already"])
    await record(_record_quarantine(services, meta, already, path, detection_id, run_id, done.cancelled),
                 done.cancelled)
    return _result(meta, already)


async def _record_quarantine(services: ActionServices, meta: dict[str, Any], already: bool, path: str,
                             detection_id: str | None, run_id: str | None, cancelled: bool) -> None:
    await _index(services, meta)
    if not already:
        details: dict[str, Any] = {"quarantine_id": meta["quarantine_id"], "sha256": meta["sha256"]}
        if cancelled:
            details["completed_while_cancelled"] = True
        await services.audit("quarantine_file", path, "quarantined", details, detection_id, run_id)


def index_hints(services: ActionServices, path: str) -> tuple[str, ...]:
    """Ids the database knows for `path`, newest first (a hint: the vault has the final word)."""
    if services.store is None:
        return ()
    try:
        rows = services.store.find_quarantine(original_path=path, include_restored=True)
    except Exception:  # noqa: BLE001 - an unreadable index only costs a scan of the vault
        return ()
    return tuple(str(r["id"]) for r in rows[:16] if r.get("id"))


async def restore_file(services: ActionServices, *, context: dict[str, Any] | None = None,
                       **params: Any) -> dict[str, Any]:
    p = Params("restore_file", params)
    on_conflict = p.string("on_conflict", default="fail", choices=ON_CONFLICT) or "fail"
    force = p.boolean("force")
    qid = p.string("quarantine_id", max_len=64)
    info = runinfo.step()
    if qid is None and info is not None and info.phase == "rollback" and isinstance(info.step_result, dict):
        # Undoing a quarantine: its result names the exact item, better than a lookup by path.
        candidate = info.step_result.get("quarantine_id")
        qid = candidate if isinstance(candidate, str) else None
    # The vault is the executor's (root's in system mode): it looks the item up and checks its roots.
    if qid is not None:
        if not QID_RE.fullmatch(qid):
            raise p.fail("quarantine_id", f"expected 32 hexadecimal digits, got {qid!r:.80}")
        meta = (await execute(services, Lookup(quarantine_id=qid))).value
    elif p.present("file_path"):
        path = _checked_path(p, services)
        hints = await asyncio.to_thread(index_hints, services, path)
        meta = (await execute(services, Lookup(path=path, hints=hints))).value
        qid = str(meta["quarantine_id"])
    else:
        raise InvalidParams("restore_file: give quarantine_id or file_path")
    if runinfo.dry_run():
        return {"dry_run": True, "would": f"restore {qid} to {meta['original_path']}",
                "quarantine_id": qid, "original_path": meta["original_path"]}
    async with services.lock(meta["original_path"]):
        done = await execute(services, Restore(qid, on_conflict, force))
    meta, already = done.value["meta"], bool(done.value["already"])
    await record(_record_restore(services, qid, meta, already, on_conflict, done.cancelled), done.cancelled)
    out = {"quarantine_id": qid, "restored_path": meta["restored_path"], "original_path": meta["original_path"],
           "sha256": meta["sha256"], "size": meta["size"], "already_restored": already}
    if not already:
        out["replaced"] = meta.get("replaced")
        if meta.get("forced_directory"):
            out["forced_directory"] = meta["forced_directory"]
    return out


async def _record_restore(services: ActionServices, qid: str, meta: dict[str, Any], already: bool,
                          on_conflict: str, cancelled: bool) -> None:
    if services.store is not None:
        try:
            await services.store.mark_restored(qid, meta.get("restored_at"), meta.get("restored_path"))
        except Exception as exc:
            raise ActionError(f"restored {qid} but could not mark it in the database: {exc}") from exc
    if already:
        return
    run_id, _, _ = runinfo.ids()
    details: dict[str, Any] = {"quarantine_id": qid, "sha256": meta["sha256"], "on_conflict": on_conflict}
    if meta.get("replaced") is not None:
        details["replaced"] = meta["replaced"]
    if meta.get("forced_directory"):
        details["forced_directory"] = meta["forced_directory"]
    if cancelled:
        details["completed_while_cancelled"] = True
    await services.audit("restore_file", meta["restored_path"], "restored", details, meta.get("detection_id"),
                         run_id)


async def delete_file(services: ActionServices, *, context: dict[str, Any] | None = None,
                      **params: Any) -> dict[str, Any]:
    p = Params("delete_file", params)
    path = _checked_path(p, services)
    if runinfo.dry_run():
        return {"dry_run": True, "would": f"delete {path}", "irreversible": True, "file_path": path}
    async with services.guard_slot("delete_file") as slot, services.lock(path):
        done = await execute(services, Delete(path), slot.use)
    result = done.value
    if result["deleted"]:
        run_id, _, _ = runinfo.ids()
        det = runinfo.detection(context)
        details: dict[str, Any] = {"sha256": result["sha256"]}
        if done.cancelled:
            details["completed_while_cancelled"] = True
        await record(services.audit("delete_file", path, "deleted", details, runinfo.text(det.get("id"), 256),
                                    run_id), done.cancelled)
    return result
