"""`Store`: the daemon's durable history in one SQLite file (WAL).

Writes are `async` and group-committed by one writer thread (see writer.py): awaiting one means its batch has
committed. `submit_*`/`submit()` enqueue without waiting, still in order with every other write. Reads are
synchronous, each thread using its own read connection, and see everything committed so far.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from . import ledger, outbox, reads, writes
from .errors import SchemaError, StoreClosed, StoreValueError
from .records import AddedDetection, DetectionState, Page, RunTrigger, WriterStats
from .schema import SCHEMA_VERSION, connect, migrate, prepare_path
from .writer import GroupCommitWriter, Operation


class Store:
    """Open with `Store.open(path)`; close with `store.close()` (drains and commits queued writes)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, *, max_batch: int = 1024):
        self.path = path
        self._writer = GroupCommitWriter(conn, max_batch=max_batch)
        self._write_conn = conn
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._stats_cache = reads.StatsCache()
        self._closed = False
        # Counts exclusion changes, so the matcher keeps the exclusions in memory and reads them again only
        # after a change instead of querying SQLite for every detection.
        self.exclusions_version = 0

    @classmethod
    def open(cls, path: str | Path, *, max_batch: int = 1024) -> Store:
        """Create the directory (0700) and file (0600) if needed, migrate the schema, start the writer."""
        p = prepare_path(Path(path))
        try:
            conn = connect(p, writer=True)
        except sqlite3.DatabaseError as exc:
            raise SchemaError(f"{p}: not a usable sdd database: {exc}") from None
        try:
            migrate(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise SchemaError(f"{p}: not a usable sdd database: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return cls(p, conn, max_batch=max_batch)

    schema_version = SCHEMA_VERSION

    # --- plumbing -----------------------------------------------------------------------------------------------
    def _read(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StoreClosed("the store is closed")
            conn = connect(self.path, writer=False)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def write(self, op: Operation, *, durable: bool = False) -> asyncio.Future[Any]:
        """Enqueue any operation (a function of the write connection); resolves after its batch commits.
        `durable=True` also fsyncs that batch, so it survives a power loss (use it before deleting the
        only other copy of the data, as intake does with spool files)."""
        return self._writer.write(op, durable=durable)

    def submit(self, op: Operation) -> None:
        """Enqueue without waiting (ordered; failures logged). `await flush()` to know it is committed."""
        self._writer.submit(op)

    def write_sync(self, op: Operation, timeout: float | None = None) -> Any:
        """Enqueue from a thread without an event loop and block until committed."""
        return self._writer.write_sync(op, timeout)

    def flush_to_disk(self) -> None:
        """Blocks until every write committed before the call is on disk (survives a power loss); from any
        thread but the event loop's (see `GroupCommitWriter.flush_to_disk`)."""
        self._writer.flush_to_disk()

    async def flush(self) -> None:
        """Wait until every write enqueued before this call has committed."""
        await self._writer.write(_noop)

    def writer_stats(self) -> WriterStats:
        return self._writer.stats()

    def info(self) -> dict[str, Any]:
        """For `status`: where the database is, its schema version and size, and the writer's counters."""
        sizes = {}
        for key, suffix in (("size_bytes", ""), ("wal_bytes", "-wal")):
            try:
                sizes[key] = os.stat(str(self.path) + suffix).st_size
            except OSError:
                sizes[key] = 0
        w = self._writer.stats()
        return {"path": str(self.path), "schema_version": SCHEMA_VERSION, **sizes,
                "writer": {"transactions": w.transactions, "operations": w.operations,
                           "failed_operations": w.failed_operations, "queued": w.queued,
                           "largest_batch": w.largest_batch}}

    def close(self) -> None:
        """Drain the queue, commit, and close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        try:
            # Bounded: on a 1M-run history an unbounded ANALYZE would hold up shutdown for seconds.
            self._write_conn.execute("PRAGMA analysis_limit = 400")
            self._write_conn.execute("PRAGMA optimize")
            self._write_conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass
        self._write_conn.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._local = threading.local()

    async def aclose(self) -> None:
        """`close()` off the event loop (draining a long queue must not block it)."""
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    # --- detections --------------------------------------------------------------------------------------------
    async def record_detection(self, data: Mapping[str, Any], *, spool_name: str | None = None,
                               received_at: float | None = None, state: DetectionState | str = "queued",
                               note: str | None = None, dedup: bool = True) -> AddedDetection:
        """Commit a detection. Same `spool_name` with the same content again → the existing row (`replayed`);
        an external `id` seen before → stored as `duplicate` of the first (`duplicate_of`), unless `dedup`
        is False (a sample detection: its id is not a dedup key)."""
        return await self._writer.write(writes.record_detection_op(data, spool_name, received_at, state, note,
                                                                   dedup), durable=True)

    async def add_detection(self, d: Mapping[str, Any], *, spool_name: str | None = None,
                            received_at: float | None = None, state: DetectionState | str = "queued",
                            note: str | None = None) -> str:
        """`record_detection` returning only the detection id (a string)."""
        return (await self.record_detection(d, spool_name=spool_name, received_at=received_at, state=state,
                                            note=note)).detection_id

    async def set_detection_state(self, detection_id: str | int, state: DetectionState | str,
                                  note: str | None = None) -> bool:
        return await self._writer.write(writes.set_detection_state_op(detection_id, state, note))

    def submit_detection_state(self, detection_id: str | int, state: DetectionState | str,
                               note: str | None = None) -> None:
        self._writer.submit(writes.set_detection_state_op(detection_id, state, note))

    # --- runs and steps ------------------------------------------------------------------------------------------
    async def create_run(self, run_id: str, workflow_id: str, detection_id: str | int | None = None,
                         context: Any = None, workflow_snapshot: Any = None, status: str = "running",
                         trigger: RunTrigger | str = "detection", *, started_at: float | None = None,
                         dry_run: bool = False, uid: int | None = None, resumed: bool = False) -> None:
        """Create a run, or update it when it exists (daemon pre-created it / a resumed run)."""
        await self._writer.write(writes.create_run_op(run_id, workflow_id, detection_id, context, workflow_snapshot,
                                                      status, trigger, started_at, dry_run, uid, resumed))

    def create_run_op(self, run_id: str, workflow_id: str, detection_id: str | int | None = None,
                      context: Any = None, workflow_snapshot: Any = None, status: str = "running",
                      trigger: RunTrigger | str = "detection", *, started_at: float | None = None,
                      dry_run: bool = False, uid: int | None = None, resumed: bool = False) -> Operation:
        """The operation behind `create_run`, for `submit()` (used by the history recorder)."""
        return writes.create_run_op(run_id, workflow_id, detection_id, context, workflow_snapshot, status, trigger,
                                    started_at, dry_run, uid, resumed)

    async def record_step_started(self, run_id: str, step_id: str, *, phase: str = "run",
                                  parent_id: str | None = None, step_type: str | None = None,
                                  action: str | None = None, attempt: int = 1, idempotent: bool = False,
                                  started_at: float | None = None, params: Any = None) -> None:
        """The step's intent record (status running): committed before a non-idempotent action runs."""
        await self._writer.write(writes.record_step_started_op(run_id, step_id, phase, parent_id, step_type, action,
                                                               attempt, idempotent, started_at, params))

    async def record_step_finished(self, run_id: str, step_id: str, status: str, *, phase: str = "run",
                                   attempts: int | None = None, started_at: float | None = None,
                                   finished_at: float | None = None, result: Any = None,
                                   error: str | None = None) -> None:
        await self._writer.write(writes.record_step_finished_op(run_id, step_id, status, phase, attempts,
                                                                started_at, finished_at, result, error))

    async def finish_run(self, run_id: str, status: str, error: str | None = None,
                         finished_at: float | None = None, *, result: Any = None) -> bool:
        """Final status; updates the per-workflow aggregates. False when the run is unknown."""
        return await self._writer.write(writes.finish_run_op(run_id, status, error, finished_at, result))

    # --- quarantine, exclusions, false positives, audit ----------------------------------------------------------
    async def put_quarantine(self, meta: Mapping[str, Any]) -> str:
        """Record a quarantined file. Keys: id (generated if absent), sha256, original_path (required), size,
        uid, gid, mode, mtime, detection_id, run_id, threat_name, quarantined_at; any other key is kept in
        `extra`. Returns the id."""
        qid, op = ledger.put_quarantine_op(meta)
        await self._writer.write(op)
        return qid

    async def mark_restored(self, qid: str, restored_at: float | None = None,
                            restored_to: str | None = None) -> bool:
        return await self._writer.write(ledger.mark_restored_op(qid, restored_at, restored_to))

    async def add_exclusion(self, kind: str, value: str, reason: str | None = None, actor: Any = None) -> bool:
        """Exclude a sha256 or a path (and everything under it). Writes its own audit record. True if new."""
        try:
            return await self._writer.write(ledger.add_exclusion_op(kind, value, reason, actor))
        finally:
            self.exclusions_version += 1

    async def remove_exclusion(self, kind: str, value: str, actor: Any = None) -> bool:
        """Writes its own audit record. True if it existed."""
        try:
            return await self._writer.write(ledger.remove_exclusion_op(kind, value, actor))
        finally:
            self.exclusions_version += 1

    async def log_false_positive(self, detection_id: str | int | None = None, *, run_id: str | None = None,
                                 sha256: str | None = None, file_path: str | None = None,
                                 threat_name: str | None = None, reason: str | None = None, actor: Any = None,
                                 details: Any = None) -> int:
        return await self._writer.write(ledger.log_false_positive_op(detection_id, run_id, sha256, file_path,
                                                                     threat_name, reason, actor, details))

    async def audit(self, actor: Any, action: str, target: str | None = None, detection_id: str | int | None = None,
                    run_id: str | None = None, outcome: str = "ok", details: Any = None) -> int:
        """One audit record; returns its row id. `actor`: a uid (int → "uid:N"), "detection:ID", "run:ID" or
        None ("sdd")."""
        return await self._writer.write(ledger.audit_op(actor, action, target, detection_id, run_id, outcome,
                                                        details))

    async def audit_count(self, row_id: int, count: int, last: float, targets: list[str] | None = None) -> bool:
        """Records how many times a coalesced audit record (see `audit`) happened, when it last did, and a
        sample of the targets it named."""
        return await self._writer.write(ledger.audit_count_op(row_id, count, last, targets))

    def submit_audit_count(self, row_id: int, count: int, last: float, targets: list[str] | None = None) -> None:
        """`audit_count` without waiting (ordered with every other write)."""
        self._writer.submit(ledger.audit_count_op(row_id, count, last, targets))

    async def purge(self, retention_days: float, *, now: float | None = None, chunk: int = 2000) -> dict[str, int]:
        """Delete finished runs (with their steps) and settled detections older than `retention_days`, in
        chunks of `chunk` rows per transaction so other writers interleave. Running runs, queued detections,
        quarantine records, exclusions, false positives and the audit log are kept."""
        if isinstance(retention_days, bool) or not isinstance(retention_days, (int, float)) or retention_days < 0:
            raise StoreValueError("retention_days: expected a number >= 0")
        cutoff = (time.time() if now is None else now) - retention_days * 86400.0
        totals = {"runs": 0, "detections": 0}
        for key, make in (("runs", writes.purge_runs_chunk_op), ("detections", writes.purge_detections_chunk_op)):
            while True:
                n = await self._writer.write(make(cutoff, chunk))
                totals[key] += n
                if n < chunk:
                    break
        return totals

    # --- the export outbox (outbox.py) ------------------------------------------------------------------------
    async def enable_outbox(self, mapper: outbox.EventMapper | None, sinks: tuple[str, ...], max_events: int,
                            on_commit: Callable[[], None] | None = None) -> None:
        """From now on, history writes add their events for `sinks` (none, or no mapper: exporting is off and
        what waited is let go). `on_commit` is called on the writer thread after a commit that added events."""
        def enable_outbox(conn: sqlite3.Connection) -> None:
            assert isinstance(conn, outbox.StoreConnection)
            if mapper is None or not sinks:
                outbox.disable(conn)
            else:
                outbox.enable(conn, mapper, sinks, max_events, on_commit)
        await self._writer.write(enable_outbox)

    def outbox_pending(self, sink: str, limit: int = 500, after: int = 0) -> list[tuple[int, str, str, float]]:
        """Events not yet delivered to `sink` (nor up to `after`), oldest first: (seq, uid, event JSON, created_at)."""
        return outbox.pending(self._read(), sink, limit, after)

    def outbox_mark_delivered(self, sink: str, seq: int) -> None:
        """`outbox_delivered` without waiting for the commit (in order with every other write)."""
        self._writer.submit(outbox.delivered_op(sink, seq))

    async def outbox_delivered(self, sink: str, seq: int) -> int:
        """`sink` has every event up to `seq`; returns how many rows every sink now had (and are gone)."""
        return await self._writer.write(outbox.delivered_op(sink, seq))

    def outbox_depths(self) -> dict[str, Any]:
        """{"sinks": {sink: events waiting}, "dropped": events dropped because the outbox was full}."""
        return outbox.depths(self._read())

    # --- reads (synchronous) --------------------------------------------------------------------------------------
    def get_detection(self, detection_id: str | int) -> dict[str, Any] | None:
        return reads.get_detection(self._read(), detection_id)

    def find_detection(self, external_id: str) -> dict[str, Any] | None:
        """The first detection that carried this external `id` (the dedup key), or None."""
        return reads.find_detection(self._read(), external_id)

    def detections_of_file(self, file_path: str, limit: int = 100) -> list[dict[str, Any]]:
        """The detections that named `file_path`, oldest first, with their data."""
        return reads.detections_of_file(self._read(), file_path, limit)

    def list_detections(self, limit: int = 50, cursor: str | None = None, *, state: str | None = None,
                        type: str | None = None, severity: str | None = None, since: float | None = None,
                        until: float | None = None) -> Page:
        return reads.list_detections(self._read(), limit, cursor, state=state, type=type, severity=severity,
                                     since=since, until=until)

    def pending_detections(self, limit: int = 100) -> list[dict[str, Any]]:
        return reads.pending_detections(self._read(), limit)

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return reads.get_run(self._read(), run_id)

    def list_runs(self, limit: int = 50, cursor: str | None = None, workflow_id: str | None = None,
                  status: str | None = None, since: float | None = None, until: float | None = None,
                  detection_ids: list[str] | None = None) -> Page:
        return reads.list_runs(self._read(), limit, cursor, workflow_id, status, since, until, detection_ids)

    def waiting_steps(self) -> list[tuple[float, str]]:
        """(since, "run_id:step_id") of the steps of running runs a guard held, oldest first."""
        return reads.waiting_steps(self._read())

    def guard_acts(self, actions: Iterable[str], since: float) -> list[tuple[str, float]]:
        """(action, time) of audited acts of `actions` since `since` (a rate limit's window after a restart)."""
        return reads.guard_acts(self._read(), actions, since)

    def runs_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        """Run ids that start with `prefix` (at most `limit`), for ids abbreviated as git does."""
        return reads.runs_with_prefix(self._read(), prefix, limit)

    def detection_ids(self, ident: str) -> list[str]:
        """The detections `ident` names, as sdd's id or as the producer's `id`."""
        return reads.detection_ids(self._read(), ident)

    def run_stats(self, workflow_id: str | None = None) -> list[dict[str, Any]]:
        return reads.run_stats(self._read(), self._stats_cache, workflow_id)

    def runs_in_status(self, status: str, limit: int | None = None) -> list[dict[str, Any]]:
        return reads.runs_in_status(self._read(), status, limit)

    def runs_for_detection(self, detection_id: str | int) -> list[dict[str, Any]]:
        return reads.runs_for_detection(self._read(), detection_id)

    def recent_run(self, workflow_id: str, file_path: str | None, threat_name: str | None,
                   since: float) -> str | None:
        return reads.recent_run(self._read(), workflow_id, file_path, threat_name, since)

    def steps_of(self, run_id: str) -> list[dict[str, Any]]:
        return reads.steps_of(self._read(), run_id)

    def get_quarantine(self, qid: str) -> dict[str, Any] | None:
        return reads.get_quarantine(self._read(), qid)

    def find_quarantine(self, sha256: str | None = None, original_path: str | None = None, *,
                        run_id: str | None = None, include_restored: bool = False) -> list[dict[str, Any]]:
        return reads.find_quarantine(self._read(), sha256, original_path, run_id, include_restored)

    def list_quarantine(self, limit: int = 50, cursor: str | None = None, *, restored: bool | None = None) -> Page:
        return reads.list_quarantine(self._read(), limit, cursor, restored)

    def is_excluded(self, sha256: str | None = None, path: str | None = None) -> bool:
        return reads.is_excluded(self._read(), sha256, path)

    def list_exclusions(self) -> list[dict[str, Any]]:
        return reads.list_exclusions(self._read())

    def list_false_positives(self, limit: int = 100) -> list[dict[str, Any]]:
        return reads.list_false_positives(self._read(), limit)

    def list_audit(self, limit: int = 50, cursor: str | None = None, *, run_id: str | None = None,
                   detection_id: str | None = None) -> Page:
        return reads.list_audit(self._read(), limit, cursor, run_id, detection_id)

    def counts(self) -> dict[str, int]:
        return reads.counts(self._read())


def _noop(conn: sqlite3.Connection) -> None:
    return None


__all__ = ["Store"]
