"""Group commit: batching, per-operation failure isolation, ordering, flush and close."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from sdd.store import Store, StoreClosed, StoreError, StoreValueError
from sdd.store.writer import GroupCommitWriter


def _hold_writer(store: Store) -> tuple[threading.Event, asyncio.Future[object]]:
    """Park the writer thread inside one operation (returns once it is parked) so later writes queue up."""
    entered, gate = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(30)

    blocker = store.write(hold)
    assert entered.wait(30)
    return gate, blocker


async def test_concurrent_writes_share_transactions(store: Store) -> None:
    gate, blocker = _hold_writer(store)
    before = store.writer_stats()
    writes = [store.add_detection({"type": "malware", "n": i}) for i in range(500)]
    tasks = [asyncio.ensure_future(w) for w in writes]
    deadline = asyncio.get_running_loop().time() + 30
    while store.writer_stats().queued < 500:  # every add has been validated and enqueued
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0)
    gate.set()
    await blocker
    ids = await asyncio.gather(*tasks)
    after = store.writer_stats()
    assert len(set(ids)) == 500
    assert after.operations - before.operations >= 500
    # 500 writes queued behind the parked one commit in one transaction (max_batch is 1024), not 500.
    assert after.transactions - before.transactions == 2
    assert after.largest_batch >= 500
    assert store.list_detections(limit=1000).items.__len__() == 500


async def test_failing_operation_fails_alone(store: Store) -> None:
    gate, blocker = _hold_writer(store)
    good1 = asyncio.ensure_future(store.add_detection({"type": "a"}))
    bad = asyncio.ensure_future(store.write(lambda c: c.execute("INSERT INTO no_such_table VALUES (1)")))
    half = asyncio.ensure_future(store.write(_half_then_fail))
    good2 = asyncio.ensure_future(store.add_detection({"type": "b"}))
    deadline = asyncio.get_running_loop().time() + 30
    while store.writer_stats().queued < 4:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0)
    gate.set()
    await blocker
    assert await good1
    assert await good2
    with pytest.raises(sqlite3.OperationalError):
        await bad
    with pytest.raises(RuntimeError):
        await half
    types = sorted(d["type"] for d in store.list_detections().items)
    assert types == ["a", "b"]  # the half-done write of `_half_then_fail` was rolled back to its savepoint
    assert store.writer_stats().failed_operations >= 2


def _half_then_fail(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO detections (type, raw, received_at, state) VALUES ('half', '{}', 1, 'queued')")
    raise RuntimeError("after half the work")


async def test_invalid_values_fail_before_enqueueing(store: Store) -> None:
    with pytest.raises(StoreValueError, match="detection.type"):
        await store.add_detection({"no_type": 1})
    with pytest.raises(StoreValueError, match="status"):
        await store.finish_run("r", "running")
    assert store.writer_stats().operations == 0


async def test_submit_is_ordered_and_flush_waits_for_it(store: Store) -> None:
    await store.create_run("r1", "wf")
    for i in range(100):
        store.submit(store.create_run_op(f"r{i + 2}", "wf", started_at=1000.0 + i))
    await store.flush()
    assert len(store.list_runs(limit=1000).items) == 101


async def test_submitted_failure_is_logged_not_raised(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    store.submit(lambda c: c.execute("INSERT INTO nope VALUES (1)"))
    await store.flush()
    assert any("nope" in r.getMessage() for r in caplog.records)


async def test_close_drains_queued_writes(db_path: Path) -> None:
    s = Store.open(db_path)
    for i in range(200):
        s.submit(s.create_run_op(f"r{i}", "wf", started_at=float(i)))
    s.close()
    with pytest.raises(StoreClosed):
        s.submit(s.create_run_op("late", "wf"))
    s2 = Store.open(db_path)
    try:
        assert len(s2.list_runs(limit=1000).items) == 200
    finally:
        s2.close()


async def test_writes_from_a_plain_thread(store: Store) -> None:
    result: list[object] = []

    def worker() -> None:
        result.append(store.write_sync(lambda c: c.execute("SELECT 41 + 1").fetchone()[0]))

    t = threading.Thread(target=worker)
    t.start()
    await asyncio.get_running_loop().run_in_executor(None, t.join)
    assert result == [42]


async def test_reads_from_other_threads_use_their_own_connection(store: Store) -> None:
    await store.add_detection({"type": "x"})
    seen = await asyncio.get_running_loop().run_in_executor(None, lambda: store.counts()["queued_detections"])
    assert seen == 1


async def _fill_up(store: Store) -> list[asyncio.Future[object]]:
    """SQLITE_FULL without filling the real disk: the file capped at its size, then three large writes and a
    small one queued; returns once the writer has met the full disk."""
    pages = await store.write(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await store.write(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 2}"))
    writes = [asyncio.ensure_future(store.add_detection({"type": "m", "blob": "x" * 200_000})) for _ in range(3)]
    writes.append(asyncio.ensure_future(store.add_detection({"type": "after"})))
    deadline = asyncio.get_running_loop().time() + 30
    while store.writer_stats().full_since is None:
        assert asyncio.get_running_loop().time() < deadline, "the writer never met the full disk"
        await asyncio.sleep(0.01)
    return writes


async def test_a_full_disk_holds_the_writes_until_there_is_room(store: Store,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    # Failing them lost a run's steps and outcome and a detection's state while their actions went ahead.
    writes = await _fill_up(store)
    await asyncio.sleep(0.3)  # (a retry or two: still nothing resolved, nothing lost)
    assert not any(w.done() for w in writes) and store.writer_stats().failed_operations == 0
    store._writer._conn.execute("PRAGMA max_page_count = 1073741823")  # room again (its mutex serialises this)
    ids = await asyncio.gather(*writes)
    assert len(set(ids)) == 4 and store.writer_stats().full_since is None
    assert [d["type"] for d in store.list_detections().items] == ["after", "m", "m", "m"]
    said = [r.getMessage() for r in caplog.records if r.name == "sdd.store"]
    assert any("the disk is full; holding" in m for m in said) and any("commits work again" in m for m in said)


async def test_a_writer_closing_on_a_full_disk_fails_what_it_holds_and_stops(db_path: Path) -> None:
    store = Store.open(db_path)
    writes = await _fill_up(store)
    await asyncio.get_running_loop().run_in_executor(None, store.close)
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert all(isinstance(r, StoreError) and "full" in str(r) for r in results)


async def test_info_reports_path_version_size_and_counters(store: Store, db_path: Path) -> None:
    await store.add_detection({"type": "m"})
    info = store.info()
    assert info["path"] == str(db_path) and info["schema_version"] == store.schema_version
    assert info["size_bytes"] > 0 and info["writer"]["operations"] == 1 and info["writer"]["queued"] == 0


async def test_writes_pending_at_close_are_committed_and_resolved(db_path: Path) -> None:
    s = Store.open(db_path)
    pending = [asyncio.ensure_future(s.add_detection({"type": "m", "n": i})) for i in range(50)]
    await asyncio.sleep(0)  # let them enqueue
    await s.aclose()
    ids = await asyncio.gather(*pending)
    assert len(set(ids)) == 50
    s2 = Store.open(db_path)
    try:
        assert len(s2.list_detections(limit=100).items) == 50
    finally:
        s2.close()


async def test_reads_from_many_threads_while_writing(store: Store) -> None:
    import concurrent.futures

    def reader() -> int:
        seen = 0
        for _ in range(200):
            page = store.list_runs(limit=10)
            seen = max(seen, len(page.items))
            store.counts()
        return seen

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [asyncio.wrap_future(pool.submit(reader)) for _ in range(4)]
        for i in range(300):
            store.submit(store.create_run_op(f"r{i}", "wf", started_at=float(i)))
            if i % 50 == 0:
                await store.flush()
        await store.flush()
        results = await asyncio.gather(*futures)
    assert all(0 <= r <= 10 for r in results)
    assert len(store.list_runs(limit=1000).items) == 300


async def test_a_durable_write_resolves_only_after_the_wal_is_flushed_past_its_commit(store: Store) -> None:
    """A detection commit (the spool file is deleted right after) is reported only once an fdatasync of the
    WAL that began after its COMMIT has returned; every commit itself runs at synchronous=NORMAL."""
    writer = store._writer

    def level(conn: sqlite3.Connection) -> int:
        return conn.execute("PRAGMA synchronous").fetchone()[0]

    syncs = writer.syncs
    assert await store.write(level) == 1  # NORMAL
    assert writer.syncs == syncs  # nothing durable asked: no flush
    assert await store.write(level, durable=True) == 1  # committed at NORMAL ...
    assert writer.syncs == syncs + 1  # ... and flushed before the waiter was told
    assert writer.synced_transactions == writer.transactions
    before = writer.durable_transactions
    await store.record_detection({"type": "malware"}, spool_name="x.json")
    assert writer.durable_transactions == before + 1
    assert writer.synced_transactions == writer.transactions


async def test_one_flush_covers_the_durable_writes_of_many_commits(store: Store) -> None:
    writer = store._writer
    syncs = writer.syncs
    await asyncio.gather(*(store.record_detection({"type": "malware"}, spool_name=f"d{i}") for i in range(200)))
    assert writer.syncs - syncs <= writer.durable_transactions
    assert writer.synced_transactions == writer.transactions
    assert len(store._read().execute("SELECT id FROM detections").fetchall()) == 200


async def test_flush_to_disk_from_a_thread_flushes_the_wal_and_fails_loudly_when_it_cannot(
        store: Store, tmp_path: Path) -> None:
    writer = store._writer
    await store.write(lambda conn: None)
    syncs = writer.syncs
    await asyncio.to_thread(store.flush_to_disk)
    assert writer.syncs == syncs + 1
    writer._wal = str(tmp_path / "no-such-wal")
    with pytest.raises(StoreError, match="fsync of the WAL failed"):
        await asyncio.to_thread(store.flush_to_disk)
    with pytest.raises(StoreClosed):
        await store.write(lambda conn: None)


def test_a_store_not_in_wal_mode_commits_durable_batches_at_synchronous_full(tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "plain.db"), isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (x)")
    writer = GroupCommitWriter(conn)
    try:
        async def levels() -> tuple[int, int]:
            def level(c: sqlite3.Connection) -> int:
                return c.execute("PRAGMA synchronous").fetchone()[0]
            return await writer.write(level, durable=True), await writer.write(level)
        assert asyncio.run(levels()) == (2, 1)  # FULL for the durable batch, NORMAL after it
        assert writer.syncs == 0
    finally:
        writer.close()
        conn.close()


async def test_a_failed_flush_fails_the_durable_write_and_stops_the_writer(store: Store, tmp_path: Path) -> None:
    """When the WAL cannot be flushed, nothing may be reported durable: the waiter fails, the writer stops."""
    writer = store._writer
    await store.write(lambda conn: None, durable=True)  # the flush works
    writer._wal = str(tmp_path / "no-such-wal")  # the next one cannot (a real failing stat/open)
    with pytest.raises(StoreError, match="fsync of the WAL failed"):
        await store.record_detection({"type": "malware"}, spool_name="lost.json")
    with pytest.raises(StoreClosed):
        await store.write(lambda conn: None)
