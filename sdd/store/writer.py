"""Group commit: one thread owns the write connection and commits whatever is queued in one transaction.

Callers enqueue an operation (a function of the connection, touching nothing but the database). The writer
takes everything queued (up to `max_batch`), runs it in one transaction and COMMITs once. An operation that
raises fails only its own waiter: the batch is rolled back and run again with one SAVEPOINT per operation,
so the failing one is undone alone (savepoints are paid for only when something failed). Waiters are resolved only
after that COMMIT returns, so "the awaitable resolved" means "the row is durable". Ordinary batches commit with
WAL + synchronous=NORMAL (they survive a crash of the process; a power loss can lose the last commits). A batch
holding a `durable` operation commits with synchronous=FULL (the WAL is fsync'd before COMMIT returns): intake
uses that for detections, because it deletes the spool file — the only other copy — once the commit returns.

No timer and no polling: when idle the thread sleeps on a condition; while it commits one batch the next
one accumulates, which is what makes batching adaptive — one caller gets one-row latency, a burst gets
large transactions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import StoreClosed, StoreError
from .records import WriterStats

log = logging.getLogger("sdd.store")

Operation = Callable[[sqlite3.Connection], Any]

# A commit that fails because the disk is full (SQLITE_FULL) is tried again, the same batch, after RETRY_FIRST
# seconds, then twice as long each time, at most RETRY_MAX; its waiters wait. Failing them lost what they
# recorded: a run's steps and outcome, a detection's state, while their files and actions had gone ahead.
# Meanwhile the queue grows only as fast as its callers are let to go on (intake stops claiming once its
# in-flight detections wait), and a closing writer stops trying: what was not committed is then failed, and
# the spool files and runs still in flight bring it back at the next start.
RETRY_FIRST = 0.25
RETRY_MAX = 5.0
STILL_FULL_EVERY = 30.0  # seconds between the log lines saying that commits still fail
_SQLITE_FULL = 13


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` is SQLite's "database or disk is full"."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.OperationalError) and code is not None and code & 0xFF == _SQLITE_FULL


@dataclass(slots=True)
class _Op:
    fn: Operation
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[Any] | concurrent.futures.Future[Any] | None = None
    durable: bool = False


class GroupCommitWriter:
    """The single writer. Thread-safe to enqueue from any thread or event loop."""

    def __init__(self, conn: sqlite3.Connection, *, max_batch: int = 1024, name: str = "sdd-store-writer"):
        self._conn = conn
        self.max_batch = max_batch
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Op] = deque()
        self._closing = False
        self._dead: BaseException | None = None
        self._sleeping = False
        self.transactions = 0
        self.durable_transactions = 0
        self.operations = 0
        self.failed_operations = 0
        self.largest_batch = 0
        self.full_since: float | None = None  # (wall clock) commits fail for a full disk and are being retried
        self.syncs = 0                   # fdatasyncs of the WAL made for durable writes
        self.synced_transactions = 0     # `transactions` as it was when the last of them began
        self._wal = _wal_path(conn)      # None (not WAL): durable batches commit at synchronous=FULL
        self._sync_cond = threading.Condition(threading.Lock())
        self._to_sync: list[tuple[_Op, Any, BaseException | None]] = []
        self._sync_closing = False
        self._syncer: threading.Thread | None = None
        self._flush_lock = threading.Lock()   # flush_to_disk's own descriptor of the WAL
        self._flush_fd, self._flush_ino = -1, -1
        if self._wal is not None:
            self._syncer = threading.Thread(target=self._sync_main, name=f"{name}-sync", daemon=True)
            self._syncer.start()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    # --- enqueueing -------------------------------------------------------------------------------------------
    def write(self, fn: Operation, *, durable: bool = False) -> asyncio.Future[Any]:
        """Enqueue from an event loop; the future resolves (on that loop) after the batch has committed.
        `durable`: the WAL is also fsync'd after that commit before the future resolves (survives power loss)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._put(_Op(fn, loop, future, durable))
        return future

    def flush_to_disk(self) -> None:
        """Blocks until every write committed before the call is on disk: an fdatasync of the WAL from the
        calling thread. For a thread that acts on a commit only later and needs it durable by then (intake
        deletes a detection's spool file only after this; its run may start before). StoreError if it fails
        (then the writer stops: nothing may be reported durable any more)."""
        if self._wal is None:  # no WAL: a durable batch of nothing, at synchronous=FULL
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            self._put(_Op(_nothing, None, future, True))
            future.result()
            return
        with self._flush_lock:
            if self._dead is not None:
                raise StoreClosed(f"the store writer stopped: {self._dead}")
            try:
                self._flush_fd, self._flush_ino = _sync_wal(self._wal, self._flush_fd, self._flush_ino)
            except OSError as exc:
                log.error("store: cannot flush the WAL to disk: %s", exc)
                error = StoreError(f"fsync of the WAL failed: {exc}")
                self._die(error)
                raise error from exc
            self.syncs += 1

    def write_sync(self, fn: Operation, timeout: float | None = None) -> Any:
        """Enqueue from a plain thread and block until committed (for tools, tests and non-async callers)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._put(_Op(fn, None, future))
        return future.result(timeout)

    def submit(self, fn: Operation) -> None:
        """Enqueue without waiting: ordered with every other write, failures are logged, nothing to await."""
        self._put(_Op(fn))

    def _put(self, op: _Op) -> None:
        with self._cond:
            if self._closing or self._dead is not None:
                raise StoreClosed("the store is closed" if self._dead is None
                                  else f"the store writer stopped: {self._dead}")
            self._queue.append(op)
            if self._sleeping:
                self._cond.notify()

    # --- the thread -------------------------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._sleeping = True
                        self._cond.wait()
                        self._sleeping = False
                    if not self._queue:
                        return  # closing and drained
                    queue = self._queue
                    if len(queue) <= self.max_batch:
                        batch = list(queue)
                        queue.clear()
                    else:
                        batch = [queue.popleft() for _ in range(self.max_batch)]
                self._commit(batch)
        except BaseException as exc:  # a bug or a dead disk: fail everyone loudly instead of hanging them
            log.exception("store writer stopped")
            self._die(exc)
        finally:
            with self._sync_cond:  # the syncer flushes what was committed, then ends
                self._sync_closing = True
                self._sync_cond.notify()

    def _die(self, exc: BaseException) -> None:
        with self._cond:
            if self._dead is None:
                self._dead = exc
            pending = list(self._queue)
            self._queue.clear()
        self._resolve([(op, None, StoreClosed(f"the store writer stopped: {exc}")) for op in pending])

    def _commit(self, batch: list[_Op]) -> None:
        durable = any(op.durable for op in batch)
        full = durable and self._wal is None
        if full:
            self._conn.execute("PRAGMA synchronous = FULL")
        try:
            outcomes = self._attempts(batch)
        finally:
            if full:
                self._conn.execute("PRAGMA synchronous = NORMAL")
        if durable:
            self.durable_transactions += 1
        self.transactions += 1
        self.operations += len(batch)
        self.failed_operations += sum(1 for _, _, e in outcomes if e is not None)
        self.largest_batch = max(self.largest_batch, len(batch))
        if durable and not full:
            # Committed: the durable ones wait for the syncer's flush, the rest are told now.
            later = [o for o in outcomes if o[0].durable and o[2] is None]
            if later:
                outcomes = [o for o in outcomes if not (o[0].durable and o[2] is None)]
                with self._sync_cond:
                    self._to_sync.extend(later)
                    self._sync_cond.notify()
        self._resolve(outcomes)
        after = getattr(self._conn, "after_commit", None)  # the outbox wakes its sinks (outbox.py)
        if after is not None:
            after()

    def _attempts(self, batch: list[_Op]) -> list[tuple[_Op, Any, BaseException | None]]:
        """The batch's outcomes; tried again while the disk is full (see RETRY_FIRST), unless closing."""
        delay, started, told = RETRY_FIRST, 0.0, 0.0
        while True:
            try:
                outcomes = self._run_fast(batch)
                if outcomes is None:  # one operation failed: redo the batch with one savepoint per operation
                    outcomes = self._run_isolated(batch)
            except sqlite3.Error as exc:
                # The transaction as a whole failed (disk full, I/O error): nothing in it is durable.
                self._rollback()
                with self._cond:
                    closing = self._closing
                if disk_full(exc) and not closing:
                    now = time.monotonic()
                    if not started:
                        started, told, self.full_since = now, now, time.time()
                        log.error("store: the disk is full; holding %d operations (and what comes after them) "
                                  "and trying again", len(batch))
                    elif now - told >= STILL_FULL_EVERY:
                        told = now
                        log.error("store: the disk is still full after %.0fs; %d operations wait", now - started,
                                  len(batch) + len(self._queue))
                    with self._cond:
                        self._cond.wait_for(lambda: self._closing, timeout=delay)
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                log.error("store commit of %d operations failed: %s", len(batch), exc)
                error = StoreError(f"commit failed: {exc}")
                outcomes = [(op, None, error) for op in batch]
                if started:  # (closing, or another failure now: not "work again")
                    self.full_since = None
                    log.error("store: gave up a batch held %.1fs for a full disk", time.monotonic() - started)
                return outcomes
            if started:
                self.full_since = None
                log.warning("store: commits work again after %.1fs of a full disk", time.monotonic() - started)
            return outcomes

    def _run_fast(self, batch: list[_Op]) -> list[tuple[_Op, Any, BaseException | None]] | None:
        """The common case, without savepoints (they double the cost of a small write). If an operation
        raises, everything is rolled back and None returned — or, alone in its batch, it just fails.
        Operations are functions of the connection only, so running them a second time is harmless.
        An operation may carry `sql` and `row` attributes (it is exactly `conn.execute(sql, row)` returning
        None): consecutive ones with the same `sql` are run with one `executemany`."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        results: list[tuple[_Op, Any, BaseException | None]] = []
        fns = [op.fn for op in batch]
        for i, j in statement_runs(fns):
            try:
                result = run_slice(conn, fns, i, j)
            except Exception as exc:  # any failure fails only its own waiter, but a full disk
                if disk_full(exc):
                    raise  # not this operation's fault: the whole batch waits for room (_attempts)
                self._rollback()
                if len(batch) == 1:
                    return [(batch[0], None, exc)]
                return None
            results.extend((op, result, None) for op in batch[i:j])
        conn.execute("COMMIT")
        return results

    def _run_isolated(self, batch: list[_Op]) -> list[tuple[_Op, Any, BaseException | None]]:
        conn = self._conn
        outcomes: list[tuple[_Op, Any, BaseException | None]] = []
        conn.execute("BEGIN IMMEDIATE")
        for op in batch:
            conn.execute("SAVEPOINT op")
            try:
                result = op.fn(conn)
            except Exception as exc:  # any failure fails only its own waiter, but a full disk
                if disk_full(exc):
                    raise
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                outcomes.append((op, None, exc))
            else:
                conn.execute("RELEASE op")
                outcomes.append((op, result, None))
        conn.execute("COMMIT")
        return outcomes

    # --- the syncer thread ------------------------------------------------------------------------------------
    def _sync_main(self) -> None:
        assert self._wal is not None
        fd, ino = -1, -1
        try:
            while True:
                with self._sync_cond:
                    while not self._to_sync and not self._sync_closing:
                        self._sync_cond.wait()
                    if not self._to_sync:
                        return  # the writer ended and everything it committed was flushed
                    items, self._to_sync = self._to_sync, []
                    # Everything in `items` committed before this point; so did transaction number `upto`.
                    upto = self.transactions
                try:
                    fd, ino = _sync_wal(self._wal, fd, ino)
                except OSError as exc:
                    log.error("store: cannot flush the WAL to disk: %s", exc)
                    error = StoreError(f"fsync of the WAL failed: {exc}")
                    # What is on disk is unknown now: nothing may be reported durable any more.
                    self._die(error)
                    self._resolve([(op, None, error) for op, _, _ in items])
                    self._fail_syncs(error)
                    return
                self.syncs += 1
                self.synced_transactions = upto
                self._resolve(items)
        finally:
            if fd >= 0:
                os.close(fd)

    def _fail_syncs(self, error: BaseException) -> None:
        """After a failed flush: every later durable write fails too, until the writer has ended."""
        while True:
            with self._sync_cond:
                while not self._to_sync and not self._sync_closing:
                    self._sync_cond.wait()
                items, self._to_sync = self._to_sync, []
                closing = self._sync_closing
            self._resolve([(op, None, error) for op, _, _ in items])
            if closing:
                return

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    @staticmethod
    def _resolve(outcomes: list[tuple[_Op, Any, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any, BaseException | None]]] = {}
        for op, result, exc in outcomes:
            if op.future is None:
                if exc is not None:
                    log.error("store write %s failed: %s", getattr(op.fn, "__name__", op.fn), exc)
            elif op.loop is None:
                fut = op.future
                assert isinstance(fut, concurrent.futures.Future)
                if exc is None:
                    fut.set_result(result)
                else:
                    fut.set_exception(exc)
            else:
                by_loop.setdefault(op.loop, []).append((op.future, result, exc))
        # One wake-up per loop per batch, not one per write.
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:
                pass  # that loop is closed; nobody is waiting any more

    # --- lifecycle --------------------------------------------------------------------------------------------
    def stats(self) -> WriterStats:
        with self._cond:
            queued = len(self._queue)
        return WriterStats(self.transactions, self.operations, self.failed_operations, queued, self.largest_batch,
                           self.full_since)

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting writes, commit everything queued, and wait for the thread to finish."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._syncer is not None and threading.current_thread() is not self._syncer:
                self._syncer.join(timeout)
        with self._flush_lock:
            if self._flush_fd >= 0:
                os.close(self._flush_fd)
                self._flush_fd = -1


def _nothing(conn: sqlite3.Connection) -> None:
    return None


def _wal_path(conn: sqlite3.Connection) -> str | None:
    """The WAL file of `conn`'s main database, or None if it is not in WAL mode (or in memory)."""
    if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        return None
    for _, name, path in conn.execute("PRAGMA database_list"):
        if name == "main" and path:
            return f"{path}-wal"
    return None


def _sync_wal(path: str, fd: int, ino: int) -> tuple[int, int]:
    """fdatasync of the WAL at `path` through `fd` of inode `ino` (opened, or opened again when the file at
    `path` is another one); the fd and inode used. (SQLite deletes the WAL only when the last connection
    closes, so while the writer's is open it stays the same file; checked anyway, one `stat` a flush.)"""
    st = os.stat(path, follow_symlinks=False)
    if fd < 0 or st.st_ino != ino:
        if fd >= 0:
            os.close(fd)
            fd = -1
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        ino = os.fstat(fd).st_ino
    os.fdatasync(fd)
    return fd, ino


def statement_runs(fns: Sequence[Operation]) -> Iterator[tuple[int, int]]:
    """Splits `fns` into consecutive slices `fns[i:j]`: either one operation, or two or more single-statement
    operations of one kind — `sql` and `row` attributes, each exactly `conn.execute(sql, row)` returning None
    (as `record_step_op` makes) — which `run_slice` runs with one `executemany`, same order, same effect."""
    i, n = 0, len(fns)
    while i < n:
        sql = getattr(fns[i], "sql", None)
        j = i + 1
        if sql is not None:
            while j < n and getattr(fns[j], "sql", None) == sql:
                j += 1
        yield i, j
        i = j


def run_slice(conn: sqlite3.Connection, fns: Sequence[Operation], i: int, j: int) -> Any:
    """Runs one slice from `statement_runs`; its result (None for an executemany)."""
    if j - i == 1:
        return fns[i](conn)
    conn.executemany(fns[i].sql, [fn.row for fn in fns[i:j]])  # type: ignore[attr-defined]
    return None


def _settle(items: list[tuple[Any, Any, BaseException | None]]) -> None:
    for future, result, exc in items:
        if future.done():
            continue  # the waiter was cancelled; the write happened anyway
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)


__all__ = ["GroupCommitWriter", "Operation", "run_slice", "statement_runs"]
