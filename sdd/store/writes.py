"""The SQL of the history's writes: detections, runs, steps, and their retention purge. Each `*_op` validates
and encodes its arguments in the caller's thread (so a bad value fails at once, naming the field) and returns
the operation the writer thread runs inside the batch. Quarantine, exclusions, false positives and the audit
trail are `ledger.py`'s; the value checks both use are `values.py`'s.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Mapping
from typing import Any

from ..engine.statuses import RunStatus, StepStatus
from . import codec, outbox
from .errors import StoreValueError
from .records import AddedDetection, DetectionState, RunTrigger
from .schema import SAMPLE_SLOTS
from .values import SHA256, detection_ref, enum_value, or_default
from .writer import Operation, run_slice, statement_runs

_TERMINAL = {s.value for s in RunStatus if s.terminal}
_STAT_COLUMN = {"completed": "completed", "failed": "failed", "rolled_back": "rolled_back",
                "cancelled": "cancelled", "interrupted": "interrupted"}


# --- detections -------------------------------------------------------------------------------------------------
def record_detection_op(data: Mapping[str, Any], spool_name: str | None, received_at: float | None,
                        state: Any, note: str | None, dedup: bool = True) -> Operation:
    """`dedup=False` records a detection that claims no producer id (a sample given to `runs.start`): its
    `id` stays in the raw data but is not the dedup key, so it neither is nor makes a duplicate."""
    if type(data) is not dict and not isinstance(data, Mapping):  # (an ABC isinstance check is slow)
        raise StoreValueError(f"detection: expected a JSON object, got {type(data).__name__}")
    dtype = data.get("type")
    if not isinstance(dtype, str) or not dtype:
        raise StoreValueError("detection.type: required, a non-empty string")
    ext = data.get("id")
    external = codec.text(ext, "detection.id", limit=1024) if isinstance(ext, (str, int)) and \
        not isinstance(ext, bool) and dedup else None
    sha = data.get("sha256")
    sha = sha.lower() if isinstance(sha, str) and SHA256.fullmatch(sha.lower()) else None
    raw = codec.dumps(dict(data), "detection", limit=codec.MAX_RAW_JSON, truncate=False)
    row = (external, codec.text(dtype, "detection.type", limit=1024),
           codec.opt_text(data.get("severity"), "detection.severity"),
           codec.opt_text(data.get("file_path"), "detection.file_path"),
           codec.opt_text(data.get("threat_name"), "detection.threat_name"), sha, raw,
           or_default(codec.timestamp(received_at, "received_at"), time.time()),
           enum_value(DetectionState, state, "state"), codec.text(note, "note", clip=True),
           codec.text(spool_name, "spool_name"))

    def record_detection(conn: sqlite3.Connection) -> AddedDetection:
        if row[-1] is not None:
            # A replay is the same file name with the same content (a crash between commit and unlink).
            # Same name, other content is a new detection: a naive producer may reuse a file name.
            old = conn.execute("SELECT id, state, duplicate_of FROM detections WHERE spool_name = ? AND raw = ? "
                               "ORDER BY id DESC LIMIT 1", (row[-1], raw)).fetchone()
            if old is not None:
                return AddedDetection(str(old[0]), DetectionState(old[1]),
                                      None if old[2] is None else str(old[2]), replayed=True)
        values = list(row)
        duplicate_of = None
        if external is not None:
            first = conn.execute("SELECT id FROM detections WHERE external_id = ?", (external,)).fetchone()
            if first is not None:
                duplicate_of = first[0]
                values[0] = None
                values[8] = DetectionState.DUPLICATE.value
                values[9] = values[9] or f"duplicate of detection {first[0]} (same id)"
        new_id = conn.execute(
            "INSERT INTO detections (external_id, type, severity, file_path, threat_name, sha256, raw, "
            "received_at, state, note, spool_name, duplicate_of) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
            (*values, duplicate_of)).fetchone()[0]
        outbox.detection_added(conn, new_id, data, values[7], duplicate_of)  # type: ignore[arg-type]
        return AddedDetection(str(new_id), DetectionState(values[8]),
                              None if duplicate_of is None else str(duplicate_of))
    return record_detection


def record_detections_op(ops: list[Operation]) -> Operation:
    """Several `record_detection_op`s as one operation (one future, one wake-up for a whole intake batch);
    its result is the list of theirs. It fails as a whole if any of them raises — nothing of it is then
    committed — and the caller falls back to one operation each."""
    def record_detections(conn: sqlite3.Connection) -> list[AddedDetection]:
        return [op(conn) for op in ops]
    return record_detections


def set_detection_state_op(detection_id: Any, state: Any, note: str | None) -> Operation:
    args = (enum_value(DetectionState, state, "state"), codec.text(note, "note", clip=True), time.time(),
            codec.row_id(detection_id, "detection_id"))

    def set_detection_state(conn: sqlite3.Connection) -> bool:
        cur = conn.execute("UPDATE detections SET state = ?, note = coalesce(?, note), updated_at = ? "
                           "WHERE id = ?", args)
        return cur.rowcount > 0
    return set_detection_state


# --- runs and steps ---------------------------------------------------------------------------------------------
def create_run_op(run_id: str, workflow_id: str, detection_id: Any, context: Any, workflow_snapshot: Any,
                  status: Any, trigger: Any, started_at: float | None, dry_run: bool, uid: int | None,
                  resumed: bool) -> Operation:
    rid = codec.text(run_id, "run_id", required=True, limit=256)
    det = detection_ref(detection_id)
    row = (rid, codec.text(workflow_id, "workflow_id", required=True, limit=1024),
           enum_value(RunStatus, status, "status"), enum_value(RunTrigger, trigger, "trigger"),
           codec.dumps_lenient(context, "context"), codec.dumps(workflow_snapshot, "workflow_snapshot", truncate=False),
           or_default(codec.timestamp(started_at, "started_at"), time.time()), int(bool(dry_run)),
           codec.integer(uid, "uid"), int(bool(resumed)))

    def create_run(conn: sqlite3.Connection) -> None:
        d = det
        if d is not None and conn.execute("SELECT 1 FROM detections WHERE id = ?", (d,)).fetchone() is None:
            d = None
        # Upsert: the daemon may create the run (pending, with its trigger and uid) before the engine's
        # RunStarted arrives; a resumed run keeps its first start time and counts the resumption.
        conn.execute(
            "INSERT INTO runs (run_id, workflow_id, status, trigger, context, workflow, started_at, dry_run, uid, "
            "resumed, detection_id) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (run_id) DO UPDATE SET "
            "status = excluded.status, context = coalesce(excluded.context, context), "
            "workflow = coalesce(excluded.workflow, workflow), uid = coalesce(uid, excluded.uid), "
            "detection_id = coalesce(detection_id, excluded.detection_id), "
            "resumed = resumed + excluded.resumed, finished_at = NULL, error = NULL",
            (*row, d))
    return create_run


def record_step_started_op(run_id: str, step_id: str, phase: str, parent_id: str | None, step_type: str | None,
                           action: str | None, attempt: int, idempotent: bool, started_at: float | None,
                           params: Any) -> Operation:
    if phase not in ("run", "rollback"):
        raise StoreValueError(f"phase: {phase!r:.40} is not run or rollback")
    row = (codec.text(run_id, "run_id", required=True, limit=256), phase,
           codec.text(step_id, "step_id", required=True, limit=4096), codec.text(parent_id, "parent_id", limit=4096),
           codec.text(step_type, "step_type", limit=256), codec.text(action, "action", limit=256),
           1 if attempt is None else codec.integer(attempt, "attempt"), int(bool(idempotent)),
           or_default(codec.timestamp(started_at, "started_at"), time.time()), codec.dumps_lenient(params, "params"))

    def record_step_started(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO steps (run_id, phase, step_id, parent_id, step_type, action, status, attempts, idempotent, "
            "started_at, params) VALUES (?,?,?,?,?,?,'running',?,?,?,?) ON CONFLICT DO UPDATE SET "
            "status = 'running', attempts = excluded.attempts, idempotent = excluded.idempotent, "
            "params = excluded.params, finished_at = NULL, result = NULL, error = NULL", row)
    return record_step_started


def record_step_waiting_op(run_id: str, step_id: str, phase: str, reason: str | None, since: float | None
                           ) -> Operation:
    """A running step (its intent row written first) held by a guard: status `waiting`, the reason and since
    when in its result; with `reason` None it is `running` again. A finished step is left as it is."""
    if phase not in ("run", "rollback"):
        raise StoreValueError(f"phase: {phase!r:.40} is not run or rollback")
    ident = (codec.text(run_id, "run_id", required=True, limit=256), phase,
             codec.text(step_id, "step_id", required=True, limit=4096))
    held = None if reason is None else codec.dumps_lenient(
        {"reason": codec.text(reason, "reason", clip=True),
         "since": or_default(codec.timestamp(since, "since"), time.time())}, "result")

    def record_step_waiting(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE steps SET status = ?, result = ? WHERE run_id = ? AND phase = ? AND step_id = ? "
            "AND status IN ('running', 'waiting')", ("running" if held is None else "waiting", held, *ident))
    return record_step_waiting


def record_step_finished_op(run_id: str, step_id: str, status: Any, phase: str, attempts: int | None,
                            started_at: float | None, finished_at: float | None, result: Any,
                            error: str | None) -> Operation:
    if phase not in ("run", "rollback"):
        raise StoreValueError(f"phase: {phase!r:.40} is not run or rollback")
    finished = or_default(codec.timestamp(finished_at, "finished_at"), time.time())
    row = (codec.text(run_id, "run_id", required=True, limit=256), phase,
           codec.text(step_id, "step_id", required=True, limit=4096), enum_value(StepStatus, status, "status"),
           codec.integer(attempts, "attempts") or 0, or_default(codec.timestamp(started_at, "started_at"), finished),
           finished, codec.dumps_lenient(result, "result"), codec.text(error, "error", clip=True))

    def record_step_finished(conn: sqlite3.Connection) -> None:
        # An upsert: skipped steps finish without ever starting.
        conn.execute(
            "INSERT INTO steps (run_id, phase, step_id, status, attempts, started_at, finished_at, result, error) "
            "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET status = excluded.status, "
            "attempts = max(attempts, excluded.attempts), finished_at = excluded.finished_at, "
            "result = excluded.result, error = excluded.error", row)
        outbox.steps_recorded(conn, row[0], (phase, row[2]))  # type: ignore[arg-type]
    return record_step_finished


# One encoder, built once: `json.dumps` with options builds a new one per call, and `JSONEncoder.encode` a new
# C encoder per call — most of the cost for the small params/results of steps. Same options as codec.dumps;
# without a circular-reference table (markers=None) a cycle ends in RecursionError, and `_json` then hands
# the value to codec, which reports it properly.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
if _c_make_encoder is not None:
    _C_ENCODE = _c_make_encoder(None, codec._default, json.encoder.encode_basestring_ascii, None, ":", ",",
                                False, False, True)

    def _ENCODE(value: Any) -> str:
        if type(value) is str:  # the C encoder only takes containers at top level... and strings are common
            return json.encoder.encode_basestring_ascii(value)
        return "".join(_C_ENCODE(value, 0))
else:  # pragma: no cover -- CPython always has the C encoder
    _FALLBACK = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=codec._default)

    def _ENCODE(value: Any) -> str:
        return _FALLBACK.encode(value)


def _json(value: Any, field: str) -> str | None:
    """`codec.dumps_lenient` for the small params/results of steps, without its per-call encoder; anything
    unusual (too large, unserialisable, too deep) goes through codec for its exact handling."""
    if value is None:
        return None
    if type(value) is not codec.RawJSON:
        try:
            text = _ENCODE(value)
        except (TypeError, ValueError, RecursionError):
            text = None
        if text is not None and len(text) <= codec.MAX_DATA_JSON:
            return text
    return codec.dumps_lenient(value, field)


def _txt(value: Any, field: str, limit: int, required: bool = False) -> str | None:
    """`codec.text` for the common short ASCII identifiers (run ids, step paths, action names): those need no
    escaping, so only their length is checked here; anything else goes through codec."""
    if type(value) is str and len(value) <= limit and value.isascii() and "\x00" not in value:
        return value
    return codec.text(value, field, required=required, limit=limit)


def _time(value: Any, field: str) -> float | None:
    if type(value) is float and math.isfinite(value):
        return value
    return codec.timestamp(value, field)


_STEP_ROW_SQL = (
    "INSERT INTO steps (run_id, phase, step_id, parent_id, step_type, action, status, attempts, idempotent, "
    "started_at, finished_at, params, result, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
    "parent_id = coalesce(excluded.parent_id, parent_id), step_type = coalesce(excluded.step_type, step_type), "
    "action = coalesce(excluded.action, action), status = excluded.status, "
    "attempts = max(attempts, excluded.attempts), idempotent = excluded.idempotent, params = excluded.params, "
    "finished_at = excluded.finished_at, result = excluded.result, error = excluded.error")


def record_step_op(run_id: str, step_id: str, status: Any, phase: str, parent_id: str | None,
                   step_type: str | None, action: str | None, idempotent: bool, params: Any, attempts: int | None,
                   started_at: float | None, finished_at: float | None, result: Any,
                   error: str | None) -> Operation:
    """A step's intent and outcome as ONE row write, for a step whose intent needed no separate commit (an
    idempotent step, or one that never acted): what `record_step_started_op` then `record_step_finished_op`
    would leave, in one upsert."""
    if phase not in ("run", "rollback"):
        raise StoreValueError(f"phase: {phase!r:.40} is not run or rollback")
    finished = or_default(_time(finished_at, "finished_at"), time.time())
    row = (_txt(run_id, "run_id", 256, True), phase, _txt(step_id, "step_id", 4096, True),
           _txt(parent_id, "parent_id", 4096), _txt(step_type, "step_type", 256), _txt(action, "action", 256),
           status.value if type(status) is StepStatus else enum_value(StepStatus, status, "status"),
           (attempts if type(attempts) is int and 0 <= attempts < 2**63 else codec.integer(attempts, "attempts"))
           or 0, 1 if idempotent else 0, or_default(_time(started_at, "started_at"), finished), finished,
           _json(params, "params"), _json(result, "result"), codec.text(error, "error", clip=True))

    def record_step(conn: sqlite3.Connection) -> None:
        conn.execute(_STEP_ROW_SQL, row)
        if exported:
            outbox.steps_recorded(conn, row[0], (phase, row[2]))  # type: ignore[arg-type]
    exported = action in outbox.STEP_ACTIONS  # may become an event: run as itself, not in an executemany
    if not exported:
        record_step.sql = _STEP_ROW_SQL  # type: ignore[attr-defined]  # lets the writer batch same-kind rows
        record_step.row = row  # type: ignore[attr-defined]
    return record_step


def finish_run_op(run_id: str, status: Any, error: str | None, finished_at: float | None, result: Any) -> Operation:
    new = enum_value(RunStatus, status, "status")
    if new not in _TERMINAL:
        raise StoreValueError(f"status: {new} is not a final run status")
    rid = codec.text(run_id, "run_id", required=True, limit=256)
    assert rid is not None
    finished = or_default(codec.timestamp(finished_at, "finished_at"), time.time())
    err = codec.text(error, "error", clip=True)
    res = codec.dumps_lenient(result, "result")

    def finish_run(conn: sqlite3.Connection) -> bool:
        old = conn.execute("SELECT workflow_id, status, started_at, dry_run FROM runs WHERE run_id = ?",
                           (rid,)).fetchone()
        if old is None:
            return False
        workflow_id, old_status, started, dry_run = old
        conn.execute("UPDATE runs SET status = ?, finished_at = ?, error = ?, result = coalesce(?, result) "
                     "WHERE run_id = ?", (new, finished, err, res, rid))
        if dry_run:
            return True  # a dry run is never counted in the statistics
        if old_status in _TERMINAL:  # finished twice (recovery): move the count, keep the duration
            if old_status != new:
                conn.execute(f"UPDATE workflow_stats SET {_STAT_COLUMN[old_status]} = "
                             f"max({_STAT_COLUMN[old_status]} - 1, 0), {_STAT_COLUMN[new]} = {_STAT_COLUMN[new]} + 1 "
                             "WHERE workflow_id = ?", (workflow_id,))
            return True
        _count_finished(conn, rid, workflow_id, new, started, finished)
        return True
    return finish_run


def _count_finished(conn: sqlite3.Connection, run_id: str, workflow_id: str, status: str, started: float,
                    finished: float) -> None:
    """The per-workflow aggregates of a run reaching its (first) final status."""
    duration = max(finished - started, 0.0)
    conn.execute("INSERT INTO workflow_stats (workflow_id) VALUES (?) ON CONFLICT DO NOTHING", (workflow_id,))
    seq = conn.execute(
        f"UPDATE workflow_stats SET finished = finished + 1, {_STAT_COLUMN[status]} = {_STAT_COLUMN[status]} + 1, "
        "duration_sum = duration_sum + ?, duration_n = duration_n + 1, sample_seq = sample_seq + 1, "
        "last_run_id = iif(coalesce(last_finished_at, 0) <= ?, ?, last_run_id), "
        "last_status = iif(coalesce(last_finished_at, 0) <= ?, ?, last_status), "
        "last_started_at = iif(coalesce(last_finished_at, 0) <= ?, ?, last_started_at), "
        "last_finished_at = max(coalesce(last_finished_at, 0), ?) "
        "WHERE workflow_id = ? RETURNING sample_seq",
        (duration, finished, run_id, finished, status, finished, started, finished, workflow_id)).fetchone()[0]
    conn.execute("INSERT OR REPLACE INTO duration_samples (workflow_id, slot, duration) VALUES (?,?,?)",
                 (workflow_id, (seq - 1) % SAMPLE_SLOTS, duration))


def run_ops(conn: sqlite3.Connection, ops: list[Operation]) -> None:
    """Runs operations in order, consecutive step rows with one `executemany` (as the writer does)."""
    for i, j in statement_runs(ops):
        run_slice(conn, ops, i, j)


def _raw(text: str | None) -> codec.RawJSON | None:
    return None if text is None else codec.RawJSON(text)


_FINISHED_RUN_SQL = (
    "INSERT INTO runs (run_id, workflow_id, status, trigger, context, workflow, started_at, dry_run, uid, resumed, "
    "finished_at, error, result, detection_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,"
    "(SELECT id FROM detections WHERE id = ?)) ON CONFLICT (run_id) DO NOTHING")


def record_finished_run_op(run_id: str, workflow_id: str, detection_id: Any, context: Any, workflow_snapshot: Any,
                           trigger: Any, started_at: float | None, dry_run: bool, uid: int | None,
                           steps: list[Operation], status: Any, error: str | None, finished_at: float | None,
                           result: Any) -> Operation:
    """A whole run that was held in memory from start to finish (no intent of it needed a commit before it
    acted): its row, already final, then its steps' rows, then the aggregates, in ONE operation — what
    `create_run_op`, the step operations and `finish_run_op` would leave, for one queue entry and three
    statements fewer. Should the run exist already (pre-created by someone), it takes exactly that path."""
    new = enum_value(RunStatus, status, "status")
    if new not in _TERMINAL:
        raise StoreValueError(f"status: {new} is not a final run status")
    rid = codec.text(run_id, "run_id", required=True, limit=256)
    wid = codec.text(workflow_id, "workflow_id", required=True, limit=1024)
    assert rid is not None and wid is not None
    det = detection_ref(detection_id)
    started = or_default(codec.timestamp(started_at, "started_at"), time.time())
    finished = or_default(codec.timestamp(finished_at, "finished_at"), time.time())
    row = (rid, wid, new, enum_value(RunTrigger, trigger, "trigger"), codec.dumps_lenient(context, "context"),
           codec.dumps(workflow_snapshot, "workflow_snapshot", truncate=False), started, int(bool(dry_run)),
           codec.integer(uid, "uid"), 0, finished, codec.text(error, "error", clip=True),
           codec.dumps_lenient(result, "result"), det)

    def record_finished_run(conn: sqlite3.Connection) -> bool:
        if conn.execute(_FINISHED_RUN_SQL, row).rowcount == 0:  # it exists: the general path, in order
            create_run_op(rid, wid, det, _raw(row[4]), _raw(row[5]), "running", row[3], started, dry_run, uid,
                          False)(conn)
            run_ops(conn, steps)
            return finish_run_op(rid, new, row[11], finished, _raw(row[12]))(conn)
        run_ops(conn, steps)
        if not dry_run:  # a dry run is never counted in the statistics
            _count_finished(conn, rid, wid, new, started, finished)
        return True
    return record_finished_run


# --- retention ---------------------------------------------------------------------------------------------------
def purge_runs_chunk_op(cutoff: float, chunk: int) -> Operation:
    def purge_runs(conn: sqlite3.Connection) -> int:
        ids = [r[0] for r in conn.execute(
            "SELECT run_id FROM runs INDEXED BY runs_started WHERE started_at < ? AND finished_at < ? "
            "AND status NOT IN ('pending', 'running') ORDER BY started_at LIMIT ?", (cutoff, cutoff, chunk))]
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        # Keep runs.stats consistent with the history that is kept.
        for wf, status, n, total in conn.execute(
                f"SELECT workflow_id, status, count(*), total(max(finished_at - started_at, 0)) FROM runs "
                f"WHERE run_id IN ({marks}) AND dry_run = 0 GROUP BY workflow_id, status", ids).fetchall():
            col = _STAT_COLUMN.get(status)
            if col is None:
                continue
            conn.execute(f"UPDATE workflow_stats SET finished = max(finished - ?, 0), {col} = max({col} - ?, 0), "
                         "duration_sum = max(duration_sum - ?, 0), duration_n = max(duration_n - ?, 0) "
                         "WHERE workflow_id = ?", (n, n, total, n, wf))
        conn.execute(f"DELETE FROM runs WHERE run_id IN ({marks})", ids)  # steps go by ON DELETE CASCADE
        return len(ids)
    return purge_runs


def purge_detections_chunk_op(cutoff: float, chunk: int) -> Operation:
    def purge_detections(conn: sqlite3.Connection) -> int:
        return conn.execute(
            "DELETE FROM detections WHERE id IN (SELECT id FROM detections INDEXED BY detections_received "
            "WHERE received_at < ? AND state != 'queued' AND NOT EXISTS "
            "(SELECT 1 FROM runs WHERE runs.detection_id = detections.id) ORDER BY received_at LIMIT ?)",
            (cutoff, chunk)).rowcount
    return purge_detections



__all__ = ["create_run_op", "finish_run_op", "purge_detections_chunk_op", "purge_runs_chunk_op", "record_detection_op",
           "record_detections_op", "record_finished_run_op", "record_step_finished_op", "record_step_op",
           "record_step_started_op", "record_step_waiting_op", "run_ops", "set_detection_state_op"]
