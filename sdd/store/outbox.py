"""The outbox: exported events written in the SAME transaction as the history rows they describe.

What is recorded is exported, and nothing else: a detection row, a finished host-changing step, a quarantine or a
restore in the ledger each add their event here inside the operation that writes them, so a rollback takes the
event with it and a commit keeps both. Sinks (a file, NATS JetStream) read the table in `seq` order; each has a
cursor (`outbox_sinks.delivered`) that it advances once the sink has the events, and a row goes when every sink
is past it.

The store knows nothing of the event format: an `EventMapper` (the daemon's OCSF mapping) is attached to the write
connection by `Store.enable_outbox()` and builds the JSON text. Without one, these hooks cost one attribute read.

Bounded: past `max_events` undelivered events (the slowest sink's backlog) new events are not stored; the oldest
undelivered are kept, the drop is counted (`outbox_meta.dropped`, in the same transaction) and logged loudly. It
never blocks a writer.

Each event's id (`metadata.uid`, the NATS `Nats-Msg-Id`) is a UUIDv5 of this database's random instance id and the
history key of what it describes, so the same fact recorded again (a resumed run finishing a step twice) gets the
same id and is stored once while it waits (`INSERT OR IGNORE`), and deduplicated downstream after that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("sdd.store")

SCHEMA = """
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: sink cursors compare against it
    uid        TEXT NOT NULL UNIQUE,               -- metadata.uid of the event, the NATS Nats-Msg-Id
    kind       TEXT NOT NULL,                      -- detection | step | quarantined | restored
    created_at REAL NOT NULL,
    event      TEXT NOT NULL                       -- the event, JSON
);
CREATE TABLE outbox_sinks (
    sink      TEXT PRIMARY KEY,
    delivered INTEGER NOT NULL DEFAULT 0           -- every seq <= this is delivered to this sink
) WITHOUT ROWID;
CREATE TABLE outbox_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO outbox_meta (key, value) VALUES ('instance', lower(hex(randomblob(16))));
INSERT INTO outbox_meta (key, value) VALUES ('dropped', '0');
"""

# The actions whose finished steps may become events (the mapper has the last word). A step row of any other
# action keeps the writer's same-statement batching.
STEP_ACTIONS = frozenset({"quarantine_file", "restore_file", "delete_file", "kill_process"})
_DROP_LOG_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class StepRow:
    """A step row as written, with what its run says about it."""

    run_id: str
    workflow_id: str | None
    detection_id: str | None
    phase: str
    step_id: str
    action: str
    status: str
    attempts: int
    started_at: float | None
    finished_at: float | None
    params: Any
    result: Any
    error: str | None


class EventMapper(Protocol):
    """Builds the JSON text of one exported event, or None when the row is not exported. Called on the writer
    thread inside the transaction: it must be pure (no I/O) and quick."""

    def detection(self, uid: str, detection_id: str, data: Mapping[str, Any], received_at: float,
                  duplicate_of: str | None) -> str | None: ...

    def step(self, uid: str, row: StepRow) -> str | None: ...

    def quarantined(self, uid: str, row: Mapping[str, Any]) -> str | None: ...

    def restored(self, uid: str, row: Mapping[str, Any]) -> str | None: ...


@dataclass
class Outbox:
    """The write connection's outbox state (touched only on the writer thread, but for `on_commit`)."""

    mapper: EventMapper
    sinks: tuple[str, ...]
    max_events: int
    instance: uuid.UUID
    on_commit: Callable[[], None] | None = None
    last_seq: int = 0
    min_delivered: int = 0
    dropped: int = 0            # since this start (the total is in outbox_meta)
    _pending: bool = False
    _last_drop_log: float = field(default=0.0)
    _drops_unlogged: int = 0

    def uid(self, key: str) -> str:
        """UUIDv5(instance, key) — what `str(uuid.uuid5(...))` gives, without its objects (a hot path)."""
        h = bytearray(hashlib.sha1(self.instance.bytes + key.encode("utf-8", "surrogatepass")).digest()[:16])
        h[6] = (h[6] & 0x0F) | 0x50
        h[8] = (h[8] & 0x3F) | 0x80
        x = h.hex()
        return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


class StoreConnection(sqlite3.Connection):
    """The store's connections: a place for the outbox on the write connection."""

    outbox: Outbox | None = None

    def after_commit(self) -> None:
        """Called by the writer after each COMMIT: wakes the sinks when the batch held events."""
        ob = self.outbox
        if ob is not None and ob._pending:
            ob._pending = False
            if ob.on_commit is not None:
                try:
                    ob.on_commit()
                except Exception:
                    log.exception("outbox wake-up failed")


def enable(conn: StoreConnection, mapper: EventMapper, sinks: tuple[str, ...], max_events: int,
           on_commit: Callable[[], None] | None) -> Outbox:
    """Attach the outbox to the write connection (run on the writer thread, as an operation). A sink new to
    this database starts at the oldest stored event; a sink no longer configured lets go of its events."""
    instance = uuid.UUID(conn.execute("SELECT value FROM outbox_meta WHERE key = 'instance'").fetchone()[0])
    first = conn.execute("SELECT coalesce(min(seq), 0) FROM outbox").fetchone()[0]
    placeholders = ",".join("?" * len(sinks))
    conn.execute(f"DELETE FROM outbox_sinks WHERE sink NOT IN ({placeholders})", sinks)
    conn.executemany("INSERT INTO outbox_sinks (sink, delivered) VALUES (?, ?) ON CONFLICT DO NOTHING",
                     [(s, max(first - 1, 0)) for s in sinks])
    ob = Outbox(mapper, sinks, max_events, instance, on_commit)
    _refresh(conn, ob)
    _release(conn, ob)
    conn.outbox = ob
    return ob


def disable(conn: StoreConnection) -> None:
    """No sinks configured: nothing is exported, and what waited for sinks no longer configured goes."""
    conn.outbox = None
    conn.execute("DELETE FROM outbox_sinks")
    conn.execute("DELETE FROM outbox")


def _refresh(conn: sqlite3.Connection, ob: Outbox) -> None:
    ob.last_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0]
    ob.min_delivered = conn.execute("SELECT coalesce(min(delivered), 0) FROM outbox_sinks").fetchone()[0]


def _release(conn: sqlite3.Connection, ob: Outbox) -> int:
    return conn.execute("DELETE FROM outbox WHERE seq <= ?", (ob.min_delivered,)).rowcount


def _put(conn: sqlite3.Connection, ob: Outbox, kind: str, key: str, build: Callable[[str], str | None]) -> None:
    if ob.last_seq - ob.min_delivered >= ob.max_events:
        _drop(conn, ob)
        return
    uid = ob.uid(key)
    try:
        event = build(uid)
    except Exception:
        log.exception("outbox: cannot build the %s event %s", kind, key)
        return
    if event is None:
        return
    cur = conn.execute("INSERT OR IGNORE INTO outbox (uid, kind, created_at, event) VALUES (?,?,?,?)",
                       (uid, kind, time.time(), event))
    if cur.rowcount:
        ob.last_seq = cur.lastrowid or ob.last_seq
        ob._pending = True


def _drop(conn: sqlite3.Connection, ob: Outbox) -> None:
    conn.execute("UPDATE outbox_meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'dropped'")
    ob.dropped += 1
    ob._drops_unlogged += 1
    now = time.monotonic()
    if now - ob._last_drop_log >= _DROP_LOG_INTERVAL:
        log.error("OUTBOX FULL: %d exported event(s) dropped (the oldest %d undelivered are kept; a sink is "
                  "down or too slow)", ob._drops_unlogged, ob.max_events)
        ob._last_drop_log = now
        ob._drops_unlogged = 0


# --- the hooks the history's operations call -----------------------------------------------------------------
def detection_added(conn: sqlite3.Connection, detection_id: int, data: Mapping[str, Any], received_at: float,
                    duplicate_of: int | None) -> None:
    ob = getattr(conn, "outbox", None)
    if ob is None:
        return
    did = str(detection_id)
    dup = None if duplicate_of is None else str(duplicate_of)
    _put(conn, ob, "detection", f"detection:{did}",
         lambda uid: ob.mapper.detection(uid, did, data, received_at, dup))


_STEP_SQL = ("SELECT s.phase, s.step_id, s.action, s.status, s.attempts, s.started_at, s.finished_at, s.params, "
             "s.result, s.error, r.workflow_id, r.detection_id, r.dry_run FROM steps s LEFT JOIN runs r "
             "ON r.run_id = s.run_id WHERE s.run_id = ?")


def steps_recorded(conn: sqlite3.Connection, run_id: str, step: tuple[str, str] | None = None) -> None:
    """The events of a run's finished host-changing steps (all of them, or the one `(phase, step_id)`)."""
    ob = getattr(conn, "outbox", None)
    if ob is None:
        return
    marks = ",".join("?" * len(STEP_ACTIONS))
    sql = _STEP_SQL + f" AND s.action IN ({marks})"
    args: tuple[Any, ...] = (run_id, *sorted(STEP_ACTIONS))
    if step is not None:
        sql += " AND s.phase = ? AND s.step_id = ?"
        args += step
    for (phase, step_id, action, status, attempts, started, finished, params, result, error, workflow_id,
         detection_id, dry_run) in conn.execute(sql, args).fetchall():
        if dry_run or status not in ("completed", "failed", "interrupted"):
            continue
        row = StepRow(run_id, workflow_id, None if detection_id is None else str(detection_id), phase, step_id,
                      action, status, attempts or 0, started, finished, _load(params), _load(result), error)
        _put(conn, ob, "step", f"step:{run_id}:{phase}:{step_id}:{status}", _step_builder(ob, row))


def _step_builder(ob: Outbox, row: StepRow) -> Callable[[str], str | None]:
    return lambda uid: ob.mapper.step(uid, row)


def quarantine_put(conn: sqlite3.Connection, qid: str) -> None:
    ob = getattr(conn, "outbox", None)
    if ob is None:
        return
    row = _quarantine_row(conn, qid)
    if row is not None:
        _put(conn, ob, "quarantined", f"quarantined:{qid}:{row['quarantined_at']!r}",
             lambda uid: ob.mapper.quarantined(uid, row))


def quarantine_restored(conn: sqlite3.Connection, qid: str) -> None:
    ob = getattr(conn, "outbox", None)
    if ob is None:
        return
    row = _quarantine_row(conn, qid)
    if row is not None:
        _put(conn, ob, "restored", f"restored:{qid}:{row['restored_at']!r}", lambda uid: ob.mapper.restored(uid, row))


def _quarantine_row(conn: sqlite3.Connection, qid: str) -> dict[str, Any] | None:
    cur = conn.execute("SELECT * FROM quarantine WHERE id = ?", (qid,))
    values = cur.fetchone()
    if values is None:
        return None
    row = dict(zip([c[0] for c in cur.description], values))
    row["extra"] = _load(row.get("extra"))
    return row


def _load(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- what the sinks use -------------------------------------------------------------------------------------
def pending(conn: sqlite3.Connection, sink: str, limit: int, after: int = 0) -> list[tuple[int, str, str, float]]:
    """Up to `limit` events not yet delivered to `sink` (nor up to `after`), oldest first:
    (seq, uid, event JSON, created_at)."""
    return conn.execute(
        "SELECT seq, uid, event, created_at FROM outbox WHERE seq > max(?, (SELECT delivered FROM outbox_sinks "
        "WHERE sink = ?)) ORDER BY seq LIMIT ?", (after, sink, limit)).fetchall()


def delivered_op(sink: str, seq: int) -> Callable[[sqlite3.Connection], int]:
    """The operation that moves `sink`'s cursor to `seq` and deletes what every sink has; returns rows deleted."""
    def outbox_delivered(conn: sqlite3.Connection) -> int:
        conn.execute("UPDATE outbox_sinks SET delivered = max(delivered, ?) WHERE sink = ?", (seq, sink))
        ob = getattr(conn, "outbox", None)
        if ob is None:
            return 0
        _refresh(conn, ob)
        return _release(conn, ob)
    return outbox_delivered


def depths(conn: sqlite3.Connection) -> dict[str, Any]:
    """Per sink: events waiting (counted, so exact); and the drops recorded since the database was made."""
    sinks = {}
    for sink, delivered in conn.execute("SELECT sink, delivered FROM outbox_sinks").fetchall():
        sinks[sink] = conn.execute("SELECT count(*) FROM outbox WHERE seq > ?", (delivered,)).fetchone()[0]
    dropped = conn.execute("SELECT value FROM outbox_meta WHERE key = 'dropped'").fetchone()
    return {"sinks": sinks, "dropped": int(dropped[0]) if dropped else 0}


__all__ = [
    "SCHEMA",
    "STEP_ACTIONS",
    "EventMapper",
    "Outbox",
    "StepRow",
    "StoreConnection",
    "delivered_op",
    "depths",
    "detection_added",
    "disable",
    "enable",
    "pending",
    "quarantine_put",
    "quarantine_restored",
    "steps_recorded",
]
