"""The SQL of every read. Functions of a read connection returning plain JSON-able dicts (what the API sends).

Lists are keyset-paginated, newest first: the cursor is the (time, id) of the last row returned, and every
filter combination walks an index that ends in that key, so page N costs what page 1 costs.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Iterable
from typing import Any

from ..engine.statuses import RunStatus
from . import codec
from .errors import StoreValueError
from .records import DetectionState, Page

MAX_PAGE = 1000

_RUN_LIST_COLUMNS = ("run_id, workflow_id, detection_id, status, trigger, started_at, finished_at, error, dry_run, "
                     "uid, resumed")
_RUN_FULL_COLUMNS = _RUN_LIST_COLUMNS + ", context, workflow, result"
_STEP_COLUMNS = ("step_id, phase, parent_id, step_type, action, status, attempts, idempotent, started_at, "
                 "finished_at, params, result, error")
_DETECTION_COLUMNS = ("id, external_id, type, severity, file_path, threat_name, sha256, received_at, state, note, "
                      "spool_name, duplicate_of")
# The producer's id as sent, also for the rows that do not hold the dedup key (duplicates, samples).
_EXTERNAL_ID = ("coalesce(external_id, CASE json_type(raw, '$.id') WHEN 'text' THEN json_extract(raw, '$.id') "
                "WHEN 'integer' THEN CAST(json_extract(raw, '$.id') AS TEXT) END)")
_DETECTION_LIST_COLUMNS = _DETECTION_COLUMNS.replace("external_id,", f"{_EXTERNAL_ID} AS external_id,", 1)
_QUARANTINE_COLUMNS = ("id, sha256, size, original_path, uid, gid, mode, mtime, detection_id, run_id, threat_name, "
                       "quarantined_at, restored_at, restored_to, extra")


def _rows(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur]


def _limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise StoreValueError(f"limit: expected an integer from 1 to {MAX_PAGE}")
    return limit


def _run(row: dict[str, Any]) -> dict[str, Any]:
    row["detection_id"] = None if row["detection_id"] is None else str(row["detection_id"])
    row["dry_run"] = bool(row["dry_run"])
    row["duration"] = (None if row["finished_at"] is None else max(row["finished_at"] - row["started_at"], 0.0))
    for key in ("context", "workflow", "result"):
        if key in row:
            row[key] = codec.loads(row[key])
    return row


def _step(row: dict[str, Any]) -> dict[str, Any]:
    row["idempotent"] = bool(row["idempotent"])
    row["params"] = codec.loads(row["params"])
    row["result"] = codec.loads(row["result"])
    return row


def _detection(row: dict[str, Any]) -> dict[str, Any]:
    row["detection_id"] = str(row.pop("id"))
    row["duplicate_of"] = None if row["duplicate_of"] is None else str(row["duplicate_of"])
    if "raw" in row:
        row["data"] = codec.loads(row.pop("raw"))
    return row


def _quarantine(row: dict[str, Any]) -> dict[str, Any]:
    row["extra"] = codec.loads(row["extra"])
    return row


def _time_window(since: Any, until: Any, column: str, where: list[str], args: list[Any]) -> None:
    if since is not None:
        where.append(f"{column} >= ?")
        args.append(codec.timestamp(since, "since"))
    if until is not None:
        where.append(f"{column} < ?")
        args.append(codec.timestamp(until, "until"))


def _keyset(cursor: str | None, time_col: str, id_col: str, id_type: type, where: list[str],
            args: list[Any]) -> None:
    if cursor is None:
        return
    t, key = codec.decode_cursor(cursor, (float, id_type))
    # `time <= t` is the index range; the OR only filters the ties at exactly t.
    where.append(f"{time_col} <= ? AND ({time_col} < ? OR {id_col} < ?)")
    args.extend((t, t, key))


def _page(rows: list[dict[str, Any]], limit: int, time_key: str, id_key: str) -> Page:
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    return Page(rows, codec.encode_cursor(rows[-1][time_key], rows[-1][id_key]))


# --- runs --------------------------------------------------------------------------------------------------------
def list_runs(conn: sqlite3.Connection, limit: int = 50, cursor: str | None = None, workflow_id: str | None = None,
              status: Any = None, since: float | None = None, until: float | None = None,
              detection_ids: list[str] | None = None) -> Page:
    """`detection_ids`: only the runs of these detections (sdd's ids; an empty list matches nothing)."""
    limit = _limit(limit)
    where: list[str] = []
    args: list[Any] = []
    if detection_ids is not None:
        ids = [codec.row_id(d, "detection_id") for d in detection_ids[:100]]
        if not ids:
            return Page([], None)
        where.append(f"detection_id IN ({','.join('?' * len(ids))})")
        args.extend(ids)
    if workflow_id is not None:
        where.append("workflow_id = ?")
        args.append(codec.text(workflow_id, "workflow_id", required=True, limit=1024))
    if status is not None:
        try:
            where.append("status = ?")
            args.append(RunStatus(status).value)
        except ValueError:
            raise StoreValueError(f"status: {status!r:.40} is not a run status") from None
    # The index is named, not left to the planner: with 1M rows a wrong guess costs a full scan.
    index = {(False, False): "runs_started", (True, False): "runs_workflow", (False, True): "runs_status",
             (True, True): "runs_workflow_status"}[(workflow_id is not None, status is not None)]
    if detection_ids is not None:
        index = "runs_detection"  # a detection has a handful of runs: find them, then sort those
    _time_window(since, until, "started_at", where, args)
    _keyset(cursor, "started_at", "run_id", str, where, args)
    sql = (f"SELECT {_RUN_LIST_COLUMNS} FROM runs INDEXED BY {index}"
           + (f" WHERE {' AND '.join(where)}" if where else "")
           + " ORDER BY started_at DESC, run_id DESC LIMIT ?")
    rows = [_run(r) for r in _rows(conn.execute(sql, (*args, limit + 1)))]
    for row in rows:
        if row["status"] == "running":
            row["waiting"] = waiting_of(conn, row["run_id"])
    return _page(rows, limit, "started_at", "run_id")


def waiting_of(conn: sqlite3.Connection, run_id: str) -> dict[str, Any] | None:
    """The step of a running run that a guard holds (`waiting`), as {step_id, action, reason, since}, or None."""
    for step_id, action, result in conn.execute(
            "SELECT step_id, action, result FROM steps WHERE run_id = ? AND status = 'waiting' LIMIT 1", (run_id,)):
        held = codec.loads(result)
        held = held if isinstance(held, dict) else {}
        return {"step_id": step_id, "action": action, "reason": held.get("reason"), "since": held.get("since")}
    return None


def waiting_steps(conn: sqlite3.Connection) -> list[tuple[float, str]]:
    """(since, "run_id:step_id") of every step of a running run left `waiting`, oldest first (for recovery)."""
    out: list[tuple[float, str]] = []
    for run_id, step_id, result in conn.execute(
            "SELECT s.run_id, s.step_id, s.result FROM runs INDEXED BY runs_status JOIN steps s USING (run_id) "
            "WHERE runs.status = 'running' AND s.status = 'waiting' AND s.phase = 'run'"):
        held = codec.loads(result)
        since = held.get("since") if isinstance(held, dict) else None
        out.append((float(since) if isinstance(since, (int, float)) else 0.0, f"{run_id}:{step_id}"))
    return sorted(out)


def guard_acts(conn: sqlite3.Connection, actions: Iterable[str], since: float) -> list[tuple[str, float]]:
    """(action, time) of the acts of `actions` the audit trail records since `since` (what a rate limit's
    window counted before a restart)."""
    names = sorted({codec.text(a, "action", required=True, limit=256) or "" for a in actions})
    if not names:
        return []
    return [(a, float(t)) for a, t in conn.execute(
        f"SELECT action, time FROM audit INDEXED BY audit_time WHERE time >= ? AND action IN "
        f"({','.join('?' * len(names))}) AND actor LIKE 'run:%'", (since, *names))]


def get_run(conn: sqlite3.Connection, run_id: str) -> dict[str, Any] | None:
    rows = _rows(conn.execute(f"SELECT {_RUN_FULL_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)))
    if not rows:
        return None
    run = _run(rows[0])
    run["external_id"] = None
    if run["detection_id"] is not None:
        found = conn.execute(f"SELECT {_EXTERNAL_ID} FROM detections WHERE id = ?", (int(run["detection_id"]),)
                             ).fetchone()
        run["external_id"] = None if found is None else found[0]
    run["steps"] = steps_of(conn, run_id)
    return run


def runs_with_prefix(conn: sqlite3.Connection, prefix: str, limit: int = 10) -> list[str]:
    """Run ids starting with `prefix` (a range of the primary key), at most `limit`, in order."""
    prefix = codec.text(prefix, "run_id", required=True, limit=256) or ""
    # A range of the primary key: every text starting with prefix sorts between prefix and prefix + U+10FFFF.
    rows = conn.execute("SELECT run_id FROM runs WHERE run_id >= ? AND run_id < ? ORDER BY run_id LIMIT ?",
                        (prefix, prefix + "\U0010ffff", _limit(limit)))
    return [r[0] for r in rows]


def detection_ids(conn: sqlite3.Connection, ident: str) -> list[str]:
    """The detections `ident` names: sdd's id (an integer) or the producer's `id` (the dedup key). Both when
    both match, sdd's first."""
    ident = codec.text(ident, "detection", required=True, limit=1024) or ""
    found: list[str] = []
    if ident.isdigit() and len(ident) < 19 and conn.execute("SELECT 1 FROM detections WHERE id = ?",
                                                            (int(ident),)).fetchone():
        found.append(ident)
    row = conn.execute("SELECT id FROM detections WHERE external_id = ?", (ident,)).fetchone()
    if row is not None and str(row[0]) not in found:
        found.append(str(row[0]))
    return found


def steps_of(conn: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    return [_step(r) for r in _rows(conn.execute(
        f"SELECT {_STEP_COLUMNS} FROM steps WHERE run_id = ? ORDER BY started_at, phase DESC, step_id", (run_id,)))]


def runs_in_status(conn: sqlite3.Connection, status: Any, limit: int | None = None) -> list[dict[str, Any]]:
    try:
        value = RunStatus(status).value
    except ValueError:
        raise StoreValueError(f"status: {status!r:.40} is not a run status") from None
    sql = f"SELECT {_RUN_FULL_COLUMNS} FROM runs INDEXED BY runs_status WHERE status = ? ORDER BY started_at, run_id"
    args: tuple[Any, ...] = (value,)
    if limit is not None:
        sql += " LIMIT ?"
        args += (_limit(limit),)
    return [_run(r) for r in _rows(conn.execute(sql, args))]


def runs_for_detection(conn: sqlite3.Connection, detection_id: Any) -> list[dict[str, Any]]:
    return [_run(r) for r in _rows(conn.execute(
        f"SELECT {_RUN_LIST_COLUMNS} FROM runs WHERE detection_id = ? ORDER BY started_at, run_id",
        (codec.row_id(detection_id, "detection_id"),)))]


def recent_run(conn: sqlite3.Connection, workflow_id: str, file_path: str | None, threat_name: str | None,
               since: float) -> str | None:
    """The newest run of `workflow_id` started at or after `since` for a detection of the same file and threat
    (the matcher's de-duplication window); None when there is none."""
    row = conn.execute(
        "SELECT r.run_id FROM detections d JOIN runs r ON r.detection_id = d.id "
        "WHERE d.file_path IS ? AND d.threat_name IS ? AND r.workflow_id = ? AND r.started_at >= ? "
        "ORDER BY r.started_at DESC LIMIT 1",
        (file_path, threat_name, workflow_id, since)).fetchone()
    return None if row is None else str(row[0])


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


class StatsCache:
    """p95 per workflow, recomputed only when that workflow's sample ring moved (its `sample_seq`)."""

    def __init__(self) -> None:
        self._p95: dict[str, tuple[int, float | None]] = {}

    def p95(self, conn: sqlite3.Connection, workflow_id: str, seq: int) -> float | None:
        cached = self._p95.get(workflow_id)
        if cached is not None and cached[0] == seq:
            return cached[1]
        values = [r[0] for r in conn.execute("SELECT duration FROM duration_samples WHERE workflow_id = ?",
                                             (workflow_id,))]
        value = _percentile(values, 0.95)
        self._p95[workflow_id] = (seq, value)
        return value


def run_stats(conn: sqlite3.Connection, cache: StatsCache, workflow_id: str | None = None) -> list[dict[str, Any]]:
    """Per workflow: runs (finished + active), active, completed, failed, rolled_back, cancelled, interrupted,
    mean_duration and p95_duration (seconds; p95 over the last 256 finished runs), last_run."""
    sql = ("SELECT workflow_id, finished, completed, failed, rolled_back, cancelled, interrupted, duration_sum, "
           "duration_n, sample_seq, last_run_id, last_status, last_started_at, last_finished_at FROM workflow_stats")
    args: tuple[Any, ...] = ()
    if workflow_id is not None:
        sql += " WHERE workflow_id = ?"
        args = (workflow_id,)
    stats: dict[str, dict[str, Any]] = {}
    for (wf, finished, completed, failed, rolled_back, cancelled, interrupted, dsum, dn, seq, last_id, last_status,
         last_started, last_finished) in conn.execute(sql, args).fetchall():
        stats[wf] = {
            "workflow_id": wf, "runs": finished, "active": 0, "completed": completed, "failed": failed,
            "rolled_back": rolled_back, "cancelled": cancelled, "interrupted": interrupted,
            "mean_duration": dsum / dn if dn else None, "p95_duration": cache.p95(conn, wf, seq),
            "last_run": None if last_id is None else {
                "run_id": last_id, "status": last_status, "started_at": last_started, "finished_at": last_finished},
        }
    active_sql = ("SELECT workflow_id, status, count(*), max(started_at) FROM runs INDEXED BY runs_status "
                  "WHERE status IN ('pending', 'running') AND dry_run = 0" + (" AND workflow_id = ?" if workflow_id else "")
                  + " GROUP BY workflow_id, status")
    for wf, status, n, latest in conn.execute(active_sql, args).fetchall():
        entry = stats.setdefault(wf, {
            "workflow_id": wf, "runs": 0, "active": 0, "completed": 0, "failed": 0, "rolled_back": 0,
            "cancelled": 0, "interrupted": 0, "mean_duration": None, "p95_duration": None, "last_run": None})
        entry["runs"] += n
        entry["active"] += n
        last = entry["last_run"]
        if last is None or latest > last["started_at"]:
            row = conn.execute("SELECT run_id FROM runs INDEXED BY runs_workflow_status WHERE workflow_id = ? "
                               "AND status = ? AND started_at = ? LIMIT 1", (wf, status, latest)).fetchone()
            entry["last_run"] = {"run_id": row[0], "status": status, "started_at": latest, "finished_at": None}
    return [stats[k] for k in sorted(stats)]


# --- detections --------------------------------------------------------------------------------------------------
def get_detection(conn: sqlite3.Connection, detection_id: Any) -> dict[str, Any] | None:
    rows = _rows(conn.execute(f"SELECT {_DETECTION_LIST_COLUMNS}, raw FROM detections WHERE id = ?",
                              (codec.row_id(detection_id, "detection_id"),)))
    return _detection(rows[0]) if rows else None


def find_detection(conn: sqlite3.Connection, external_id: str) -> dict[str, Any] | None:
    rows = _rows(conn.execute(f"SELECT {_DETECTION_COLUMNS}, raw FROM detections WHERE external_id = ?",
                              (str(external_id),)))
    return _detection(rows[0]) if rows else None


def detections_of_file(conn: sqlite3.Connection, file_path: str, limit: int = 100) -> list[dict[str, Any]]:
    """The detections that named `file_path`, oldest first, with their data (what else said this file was bad)."""
    return [_detection(r) for r in _rows(conn.execute(
        f"SELECT {_DETECTION_LIST_COLUMNS}, raw FROM detections INDEXED BY detections_file_threat "
        "WHERE file_path = ? ORDER BY received_at, id LIMIT ?",
        (codec.text(file_path, "file_path", required=True, limit=65536), _limit(limit))))]


def list_detections(conn: sqlite3.Connection, limit: int = 50, cursor: str | None = None, *, state: Any = None,
                    type: str | None = None, severity: str | None = None, since: float | None = None,
                    until: float | None = None) -> Page:
    limit = _limit(limit)
    where: list[str] = []
    args: list[Any] = []
    index = "detections_received"
    if state is not None:
        try:
            args.append(DetectionState(state).value)
        except ValueError:
            raise StoreValueError(f"state: {state!r:.40} is not a detection state") from None
        where.append("state = ?")
        index = "detections_state"
    if type is not None:
        where.append("type = ?")
        args.append(codec.text(type, "type", required=True))
        if state is None:
            index = "detections_type"
    if severity is not None:
        where.append("severity = ?")
        args.append(codec.text(severity, "severity", required=True))
    _time_window(since, until, "received_at", where, args)
    _keyset(cursor, "received_at", "id", int, where, args)
    sql = (f"SELECT {_DETECTION_LIST_COLUMNS} FROM detections INDEXED BY {index}"
           + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY received_at DESC, id DESC LIMIT ?")
    rows = _rows(conn.execute(sql, (*args, limit + 1)))
    page = _page(rows, limit, "received_at", "id")
    return Page([_detection(r) for r in page.items], page.cursor)


def pending_detections(conn: sqlite3.Connection, limit: int = 100) -> list[dict[str, Any]]:
    """Detections still `queued`, oldest first, with their data: what the daemon has yet to match."""
    return [_detection(r) for r in _rows(conn.execute(
        f"SELECT {_DETECTION_COLUMNS}, raw FROM detections INDEXED BY detections_state WHERE state = 'queued' "
        "ORDER BY received_at, id LIMIT ?", (_limit(limit),)))]


# --- quarantine and exclusions ---------------------------------------------------------------------------------
def get_quarantine(conn: sqlite3.Connection, qid: str) -> dict[str, Any] | None:
    rows = _rows(conn.execute(f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine WHERE id = ?", (qid,)))
    return _quarantine(rows[0]) if rows else None


def find_quarantine(conn: sqlite3.Connection, sha256: str | None = None, original_path: str | None = None,
                    run_id: str | None = None, include_restored: bool = False) -> list[dict[str, Any]]:
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("sha256", sha256 and sha256.lower()), ("original_path", original_path),
                          ("run_id", run_id)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if not where:
        raise StoreValueError("find_quarantine: give sha256, original_path or run_id")
    if not include_restored:
        where.append("restored_at IS NULL")
    return [_quarantine(r) for r in _rows(conn.execute(
        f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine WHERE {' AND '.join(where)} "
        "ORDER BY quarantined_at DESC, id DESC", args))]


def list_quarantine(conn: sqlite3.Connection, limit: int = 50, cursor: str | None = None,
                    restored: bool | None = None) -> Page:
    limit = _limit(limit)
    where: list[str] = []
    args: list[Any] = []
    if restored is not None:
        where.append("restored_at IS NOT NULL" if restored else "restored_at IS NULL")
    _keyset(cursor, "quarantined_at", "id", str, where, args)
    sql = (f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine INDEXED BY quarantine_time"
           + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY quarantined_at DESC, id DESC LIMIT ?")
    rows = [_quarantine(r) for r in _rows(conn.execute(sql, (*args, limit + 1)))]
    return _page(rows, limit, "quarantined_at", "id")


def _ancestors(path: str) -> Iterable[str]:
    path = os.path.normpath(path)
    while True:
        yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def is_excluded(conn: sqlite3.Connection, sha256: str | None = None, path: str | None = None) -> bool:
    """True when the hash is excluded, or the path or one of its parent directories is."""
    if isinstance(sha256, str) and conn.execute("SELECT 1 FROM exclusions WHERE kind = 'sha256' AND value = ?",
                                                (sha256.lower(),)).fetchone():
        return True
    if isinstance(path, str) and path.startswith("/"):
        candidates = list(_ancestors(path))[:256]
        marks = ",".join("?" * len(candidates))
        try:
            found = conn.execute(f"SELECT 1 FROM exclusions WHERE kind = 'path' AND value IN ({marks}) LIMIT 1",
                                 candidates).fetchone()
        except UnicodeEncodeError:  # a path with lone surrogates cannot have been stored as an exclusion
            return False
        return found is not None
    return False


def list_exclusions(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return _rows(conn.execute("SELECT kind, value, reason, actor, created_at FROM exclusions ORDER BY kind, value"))


def list_false_positives(conn: sqlite3.Connection, limit: int = 100) -> list[dict[str, Any]]:
    rows = _rows(conn.execute("SELECT id, detection_id, run_id, sha256, file_path, threat_name, reason, actor, "
                              "created_at, details FROM false_positives ORDER BY id DESC LIMIT ?", (_limit(limit),)))
    for r in rows:
        r["details"] = codec.loads(r["details"])
    return rows


def list_audit(conn: sqlite3.Connection, limit: int = 50, cursor: str | None = None, run_id: str | None = None,
               detection_id: str | None = None) -> Page:
    limit = _limit(limit)
    where: list[str] = []
    args: list[Any] = []
    if run_id is not None:
        where.append("run_id = ?")
        args.append(run_id)
    if detection_id is not None:
        where.append("detection_id = ?")
        args.append(str(detection_id))
    _keyset(cursor, "time", "id", int, where, args)
    sql = ("SELECT id, time, actor, action, target, detection_id, run_id, outcome, details FROM audit"
           + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY time DESC, id DESC LIMIT ?")
    rows = _rows(conn.execute(sql, (*args, limit + 1)))
    for r in rows:
        r["details"] = codec.loads(r["details"])
    return _page(rows, limit, "time", "id")


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Small, index-only counts for `status` and D-Bus properties (never a scan of the history)."""
    def one(sql: str) -> int:
        return int(conn.execute(sql).fetchone()[0])
    return {
        "queued_detections": one("SELECT count(*) FROM detections INDEXED BY detections_state WHERE state = 'queued'"),
        "pending_runs": one("SELECT count(*) FROM runs INDEXED BY runs_status WHERE status = 'pending'"),
        "running_runs": one("SELECT count(*) FROM runs INDEXED BY runs_status WHERE status = 'running'"),
        "finished_runs": one("SELECT coalesce(sum(finished), 0) FROM workflow_stats"),
        "quarantined": one("SELECT count(*) FROM quarantine WHERE restored_at IS NULL"),
        "exclusions": one("SELECT count(*) FROM exclusions"),
    }
