"""The writes of what outlives history retention: quarantine records, exclusions, false positives and the
audit trail (every destructive action and every state-changing call, with who asked)."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Mapping
from typing import Any

from . import codec, outbox
from .errors import StoreValueError
from .records import ExclusionKind
from .values import actor_value, enum_value, or_default, path_value, sha256_value
from .writer import Operation

# --- quarantine, exclusions, false positives, audit --------------------------------------------------------------
_QUARANTINE_COLUMNS = ("id", "sha256", "size", "original_path", "uid", "gid", "mode", "mtime", "detection_id",
                       "run_id", "threat_name", "quarantined_at")


def put_quarantine_op(meta: Mapping[str, Any]) -> tuple[str, Operation]:
    if not isinstance(meta, Mapping):
        raise StoreValueError("quarantine meta: expected a mapping")
    qid = codec.text(meta.get("id") or uuid.uuid4().hex, "id", limit=256)
    assert qid is not None
    extra = {k: v for k, v in meta.items() if k not in _QUARANTINE_COLUMNS}
    row = (qid, sha256_value(meta.get("sha256")), codec.integer(meta.get("size"), "size"),
           codec.text(meta.get("original_path"), "original_path", required=True, limit=8192),
           codec.integer(meta.get("uid"), "uid"), codec.integer(meta.get("gid"), "gid"),
           codec.integer(meta.get("mode"), "mode"), codec.timestamp(meta.get("mtime"), "mtime"),
           codec.text(meta.get("detection_id"), "detection_id", limit=256),
           codec.text(meta.get("run_id"), "run_id", limit=256), codec.text(meta.get("threat_name"), "threat_name"),
           or_default(codec.timestamp(meta.get("quarantined_at"), "quarantined_at"), time.time()),
           codec.dumps(extra or None, "extra"))

    def put_quarantine(conn: sqlite3.Connection) -> str:
        known = conn.execute("SELECT original_path FROM quarantine WHERE id = ?", (qid,)).fetchone()
        if known is not None and known[0] != row[3]:
            raise StoreValueError(f"quarantine id {qid!r} already names another file ({known[0]!r})")
        # An upsert: the vault gives the same file the same id, so quarantining it again (an idempotent re-run,
        # or a second infection after a restore) must land on the same row — and a restored item that is back in
        # the vault is no longer restored. A plain re-run keeps the first quarantine time.
        conn.execute("INSERT INTO quarantine (id, sha256, size, original_path, uid, gid, mode, mtime, detection_id, "
                     "run_id, threat_name, quarantined_at, extra) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
                     "ON CONFLICT(id) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size, "
                     "uid = excluded.uid, gid = excluded.gid, mode = excluded.mode, mtime = excluded.mtime, "
                     "detection_id = excluded.detection_id, run_id = excluded.run_id, "
                     "threat_name = excluded.threat_name, extra = excluded.extra, "
                     "quarantined_at = CASE WHEN quarantine.restored_at IS NULL THEN quarantine.quarantined_at "
                     "ELSE excluded.quarantined_at END, restored_at = NULL, restored_to = NULL", row)
        outbox.quarantine_put(conn, qid)
        return qid
    return qid, put_quarantine


def mark_restored_op(qid: str, restored_at: float | None, restored_to: str | None) -> Operation:
    args = (or_default(codec.timestamp(restored_at, "restored_at"), time.time()),
            codec.text(restored_to, "restored_to", limit=8192), codec.text(qid, "qid", required=True, limit=256))

    def mark_restored(conn: sqlite3.Connection) -> bool:
        done = conn.execute("UPDATE quarantine SET restored_at = ?, restored_to = ? WHERE id = ?",
                            args).rowcount > 0
        if done:
            outbox.quarantine_restored(conn, args[2])  # type: ignore[arg-type]
        return done
    return mark_restored


def exclusion_value(kind: Any, value: Any) -> tuple[str, str]:
    k = enum_value(ExclusionKind, kind, "kind")
    return k, (sha256_value(value, "value") if k == "sha256" else path_value(value, "value"))


def _audit_row(actor: Any, action: str, target: Any, detection_id: Any, run_id: Any, outcome: str,
               details: Any) -> tuple[Any, ...]:
    return (time.time(), actor_value(actor), codec.text(action, "action", required=True, limit=256),
            codec.text(target, "target", limit=8192),
            None if detection_id is None else codec.text(str(detection_id), "detection_id", limit=256),
            codec.text(run_id, "run_id", limit=256), codec.text(outcome, "outcome", required=True, limit=256),
            codec.dumps(details, "details"))


_AUDIT_SQL = ("INSERT INTO audit (time, actor, action, target, detection_id, run_id, outcome, details) "
              "VALUES (?,?,?,?,?,?,?,?)")


def add_exclusion_op(kind: Any, value: Any, reason: str | None, actor: Any) -> Operation:
    k, v = exclusion_value(kind, value)
    row = (k, v, codec.text(reason, "reason"), actor_value(actor), time.time())
    audit = _audit_row(actor, "exclusion.add", f"{k}:{v}", None, None, "ok", {"reason": reason})

    def add_exclusion(conn: sqlite3.Connection) -> bool:
        added = conn.execute("INSERT INTO exclusions (kind, value, reason, actor, created_at) VALUES (?,?,?,?,?) "
                             "ON CONFLICT DO NOTHING", row).rowcount > 0
        conn.execute(_AUDIT_SQL, audit[:6] + ("ok" if added else "exists",) + audit[7:])
        return added
    return add_exclusion


def remove_exclusion_op(kind: Any, value: Any, actor: Any) -> Operation:
    k, v = exclusion_value(kind, value)
    audit = _audit_row(actor, "exclusion.remove", f"{k}:{v}", None, None, "ok", None)

    def remove_exclusion(conn: sqlite3.Connection) -> bool:
        removed = conn.execute("DELETE FROM exclusions WHERE kind = ? AND value = ?", (k, v)).rowcount > 0
        conn.execute(_AUDIT_SQL, audit[:6] + ("ok" if removed else "absent",) + audit[7:])
        return removed
    return remove_exclusion


def log_false_positive_op(detection_id: Any, run_id: Any, sha256: Any, file_path: Any, threat_name: Any,
                          reason: Any, actor: Any, details: Any) -> Operation:
    row = (None if detection_id is None else codec.text(str(detection_id), "detection_id", limit=256),
           codec.text(run_id, "run_id", limit=256), None if sha256 is None else sha256_value(sha256),
           codec.text(file_path, "file_path", limit=8192), codec.text(threat_name, "threat_name"),
           codec.text(reason, "reason"), actor_value(actor), time.time(), codec.dumps(details, "details"))

    def log_false_positive(conn: sqlite3.Connection) -> int:
        return int(conn.execute(
            "INSERT INTO false_positives (detection_id, run_id, sha256, file_path, threat_name, reason, actor, "
            "created_at, details) VALUES (?,?,?,?,?,?,?,?,?) RETURNING id", row).fetchone()[0])
    return log_false_positive


def audit_op(actor: Any, action: str, target: Any, detection_id: Any, run_id: Any, outcome: str,
             details: Any) -> Operation:
    row = _audit_row(actor, action, target, detection_id, run_id, outcome, details)

    def audit(conn: sqlite3.Connection) -> int:
        return int(conn.execute(_AUDIT_SQL, row).lastrowid or 0)
    return audit


def audit_count_op(row_id: int, count: int, last: float, targets: list[str] | None = None) -> Operation:
    """Sets `details.count`, `details.last` (and `details.targets`) of one audit row: a coalesced record
    (refused API calls) whose first occurrence was written at once and whose later ones were counted."""
    args = (codec.integer(count, "count"), codec.timestamp(last, "last"),
            codec.dumps([str(t)[:256] for t in (targets or [])[:100]], "targets"), codec.integer(row_id, "row_id"))

    def audit_count(conn: sqlite3.Connection) -> bool:
        return conn.execute("UPDATE audit SET details = json_set(coalesce(details, '{}'), '$.count', ?, "
                            "'$.last', ?, '$.targets', json(?)) WHERE id = ?", args).rowcount > 0
    return audit_count
