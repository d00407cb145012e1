"""The file primitives the executor hosts: quarantine, restore, look up and delete, each on a typed request.

Each checks the request against the executor's own `Policy` before touching anything (normalised absolute
path strictly inside an allowed root; a quarantine id's original path inside one too), then does its work
through the vault and `safepath`, which walk every path with O_NOFOLLOW. They run in a worker thread with an
`Abort` (stopped before the commit point, nothing is left behind) and call `before_act` once the target is
known to be actable on: there the daemon takes its rate limit.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

from . import kill, scan, script
from .abortable import Abort
from .errors import Forbidden, InvalidRequest, NotFound
from .paths import checked_abs_path, under_roots
from .policy import Policy
from .protocol import Delete, Kill, Lookup, Quarantine, Restore, RunScript, Scan
from .restoring import restore as restore_item
from .safepath import lstat_at, open_parent, open_regular, unlink_same
from .vault import Vault

BeforeAct = Callable[[], None]
# What a lookup tells the daemon about an item: enough to lock, report and plan, no file contents.
LOOKUP_FIELDS = ("quarantine_id", "original_path", "sha256", "size", "state", "detection_id", "run_id")


def checked_path(policy: Policy, value: str, what: str) -> str:
    path = checked_abs_path(value, lambda n, m: InvalidRequest(f"{what}: {n} {m}"), "file_path")
    if not under_roots(path, policy.allowed_roots):
        roots = ", ".join(policy.allowed_roots) or "(none configured)"
        raise Forbidden(f"{what}: {path} is outside the allowed roots ({roots})")
    return path


def quarantine(policy: Policy, req: Quarantine, before_act: BeforeAct, abort: Abort) -> dict[str, Any]:
    path = checked_path(policy, req.path, "quarantine_file")
    meta, already = Vault(policy.vault_dir).quarantine(
        path, detection_id=req.detection_id, threat_name=req.threat_name, run_id=req.run_id, hints=req.hints,
        before_act=before_act, abort=abort)
    return {"meta": meta, "already": already}


def _meta_in_roots(policy: Policy, meta: dict[str, Any], what: str) -> dict[str, Any]:
    if not under_roots(str(meta.get("original_path", "")), policy.allowed_roots):
        raise Forbidden(f"{what}: {meta.get('original_path')} is outside the allowed roots")
    return meta


def restore(policy: Policy, req: Restore, before_act: BeforeAct, abort: Abort) -> dict[str, Any]:
    vault = Vault(policy.vault_dir)
    _meta_in_roots(policy, vault.read_meta(req.quarantine_id), "restore_file")
    meta, already = restore_item(vault, req.quarantine_id, on_conflict=req.on_conflict, force=req.force,
                                 abort=abort)
    return {"meta": meta, "already": already}


def lookup(policy: Policy, req: Lookup, before_act: BeforeAct, abort: Abort) -> dict[str, Any]:
    vault = Vault(policy.vault_dir)
    if req.quarantine_id is not None:
        meta = _meta_in_roots(policy, vault.read_meta(req.quarantine_id), "restore_file")
    elif req.path is not None:
        path = checked_path(policy, req.path, "restore_file")
        found = vault.find(path, "quarantined", req.hints) or vault.find(path, None, req.hints)
        if found is None:
            raise NotFound(f"restore_file: nothing from {path} is in the quarantine vault")
        meta = found
    else:
        raise InvalidRequest("restore_file: give quarantine_id or file_path")
    return {k: meta.get(k) for k in LOOKUP_FIELDS}


def delete(policy: Policy, req: Delete, before_act: BeforeAct, abort: Abort) -> dict[str, Any]:
    what = "delete_file"
    path = checked_path(policy, req.path, what)
    with open_parent(path, what=what) as parent:
        if lstat_at(parent) is None:
            return {"deleted": False, "already_absent": True, "file_path": path, "sha256": None, "size": None,
                    "irreversible": True}
        fd, fst = open_regular(parent, what)
        try:
            before_act()  # the rate limit, once the file is known to be deletable
            digest = hashlib.sha256()
            while chunk := os.read(fd, 1 << 20):
                abort.check()
                digest.update(chunk)
            abort.commit()
            unlink_same(parent, fst, what)
        finally:
            os.close(fd)
    return {"deleted": True, "already_absent": False, "file_path": path, "sha256": digest.hexdigest(),
            "size": fst.st_size, "irreversible": True}


Primitive = Callable[[Policy, Any, BeforeAct, Abort], dict[str, Any]]
AsyncPrimitive = Callable[[Policy, Any, Callable[[], Awaitable[None]]], Awaitable[dict[str, Any]]]
# In a worker thread, with an Abort: the file primitives. On the event loop: kill (pidfd waits) and
# run_script (a child process group), which a cancellation stops.
SYNC: dict[type, Primitive] = {Quarantine: quarantine, Restore: restore, Lookup: lookup, Delete: delete}
ASYNC: dict[type, AsyncPrimitive] = {Kill: kill.kill, RunScript: script.run, Scan: scan.scan}
