"""Runs and steps: keyset pagination (with ties), filters, stats, statuses and retention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sdd.store import Store, StoreValueError


async def _runs(store: Store, spec: list[tuple[str, str, str, float, float | None]]) -> None:
    for run_id, wf, status, started, finished in spec:
        await store.create_run(run_id, wf, started_at=started, trigger="api")
        if finished is not None:
            await store.finish_run(run_id, status, finished_at=finished)


def _all_pages(store: Store, limit: int, **filters: object) -> list[str]:
    seen: list[str] = []
    cursor = None
    for _ in range(1000):
        page = store.list_runs(limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        assert len(page.items) <= limit
        seen.extend(r["run_id"] for r in page.items)
        cursor = page.cursor
        if cursor is None:
            return seen
    raise AssertionError("pagination did not end")


async def test_pages_cover_every_run_once_even_with_equal_start_times(store: Store) -> None:
    # 30 runs sharing only three distinct start times: the run_id must break the ties.
    spec = [(f"run-{i:02d}", "wf", "completed", float(100 + i % 3), float(200 + i)) for i in range(30)]
    await _runs(store, spec)
    expected = [r[0] for r in sorted(spec, key=lambda r: (r[3], r[0]), reverse=True)]
    for limit in (1, 4, 7, 30, 50):
        assert _all_pages(store, limit) == expected


async def test_filters_by_workflow_status_and_time(store: Store) -> None:
    await _runs(store, [
        ("a1", "alpha", "completed", 10.0, 11.0), ("a2", "alpha", "failed", 20.0, 25.0),
        ("a3", "alpha", "completed", 30.0, 31.0), ("b1", "beta", "completed", 15.0, 16.0),
        ("b2", "beta", "running", 40.0, None),
    ])
    assert _all_pages(store, 2, workflow_id="alpha") == ["a3", "a2", "a1"]
    assert _all_pages(store, 2, status="completed") == ["a3", "b1", "a1"]
    assert _all_pages(store, 2, workflow_id="alpha", status="completed") == ["a3", "a1"]
    assert _all_pages(store, 2, since=15.0, until=31.0) == ["a3", "a2", "b1"]
    assert _all_pages(store, 2, workflow_id="beta", status="running") == ["b2"]
    assert _all_pages(store, 2, workflow_id="nobody") == []
    page = store.list_runs(limit=1, workflow_id="alpha", status="failed")
    run = page.items[0]
    assert run["duration"] == pytest.approx(5.0) and run["trigger"] == "api" and page.cursor is None


@pytest.mark.parametrize("cursor", ["", "!!!", "W10", "WyJhIiwgMV0", "x" * 5000, "WzEsMiwzXQ"])
async def test_bad_cursor_is_a_clear_error(store: Store, cursor: str) -> None:
    with pytest.raises(StoreValueError, match="cursor"):
        store.list_runs(cursor=cursor)


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"limit": 100000}, {"limit": "5"}, {"status": "bogus"},
                                    {"since": "yesterday"}, {"until": float("nan")}])
async def test_bad_list_parameters_are_named(store: Store, kwargs: dict[str, object]) -> None:
    with pytest.raises(StoreValueError, match=next(iter(kwargs))):
        store.list_runs(**kwargs)  # type: ignore[arg-type]


async def test_query_plan_uses_the_keyset_index(store: Store) -> None:
    conn = store._read()
    plan = " ".join(str(r) for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT run_id FROM runs INDEXED BY runs_workflow_status WHERE workflow_id = ? "
        "AND status = ? AND started_at <= ? AND (started_at < ? OR run_id < ?) ORDER BY started_at DESC, "
        "run_id DESC LIMIT 51", ("w", "completed", 1.0, 1.0, "x")))
    assert "runs_workflow_status" in plan and "TEMP B-TREE" not in plan


async def test_get_run_returns_steps_with_everything(store: Store) -> None:
    await store.create_run("r", "wf", context={"k": 1}, workflow_snapshot={"workflow_id": "wf"}, uid=1000,
                           trigger="api", dry_run=True)
    await store.record_step_started("r", "q", step_type="action", action="quarantine_file", attempt=1,
                                    idempotent=True, started_at=5.0, params={"file_path": "/tmp/x"})
    await store.record_step_started("r", "q", step_type="action", action="quarantine_file", attempt=2,
                                    idempotent=True, started_at=6.0, params={"file_path": "/tmp/x"})
    await store.record_step_finished("r", "q", "completed", attempts=2, started_at=5.0, finished_at=7.0,
                                     result={"qid": "abc"})
    await store.record_step_started("r", "q", phase="rollback", action="restore_file", started_at=8.0)
    await store.record_step_finished("r", "q", "failed", phase="rollback", attempts=1, error="boom")
    await store.record_step_finished("r", "later", "skipped", started_at=9.0, finished_at=9.0)
    await store.finish_run("r", "failed", "step q failed")
    run = store.get_run("r")
    assert run is not None
    assert run["uid"] == 1000 and run["dry_run"] is True and run["context"] == {"k": 1}
    assert run["workflow"] == {"workflow_id": "wf"} and run["status"] == "failed" and run["error"] == "step q failed"
    steps = [(s["step_id"], s["phase"], s["status"], s["attempts"]) for s in run["steps"]]
    assert steps == [("q", "run", "completed", 2), ("q", "rollback", "failed", 1), ("later", "run", "skipped", 0)]
    q = run["steps"][0]
    assert q["result"] == {"qid": "abc"} and q["params"] == {"file_path": "/tmp/x"} and q["idempotent"] is True
    assert run["steps"][1]["error"] == "boom"
    assert store.get_run("missing") is None


async def test_steps_need_their_run(store: Store) -> None:
    import sqlite3
    with pytest.raises(sqlite3.IntegrityError):
        await store.record_step_started("no-such-run", "s")


async def test_create_run_is_an_upsert_that_counts_resumptions(store: Store) -> None:
    det = await store.add_detection({"type": "malware"})
    await store.create_run("r", "wf", det, status="pending", trigger="schedule", uid=7, started_at=50.0)
    await store.create_run("r", "wf", None, {"ctx": 1}, {"snap": 1}, status="running", trigger="api",
                           started_at=60.0)
    await store.create_run("r", "wf", status="running", resumed=True, started_at=70.0)
    run = store.get_run("r")
    assert run is not None
    assert (run["status"], run["trigger"], run["uid"], run["detection_id"], run["started_at"]) == \
        ("running", "schedule", 7, det, 50.0)
    assert run["context"] == {"ctx": 1} and run["workflow"] == {"snap": 1} and run["resumed"] == 1
    assert [r["run_id"] for r in store.runs_in_status("running")] == ["r"]
    assert [r["run_id"] for r in store.runs_for_detection(det)] == ["r"]


async def test_unknown_detection_reference_is_dropped_not_fatal(store: Store) -> None:
    await store.create_run("r", "wf", "4242")
    await store.create_run("r2", "wf", "external-id-abc")
    assert store.get_run("r")["detection_id"] is None  # type: ignore[index]
    assert store.get_run("r2")["detection_id"] is None  # type: ignore[index]


async def test_run_stats_per_workflow(store: Store) -> None:
    spec = [(f"ok{i}", "wf", "completed", float(i * 10), float(i * 10 + i + 1)) for i in range(20)]
    spec += [("bad", "wf", "failed", 500.0, 510.0), ("rb", "wf", "rolled_back", 600.0, 601.0),
             ("other", "zz", "cancelled", 5.0, 6.0), ("live", "zz", "running", 900.0, None)]
    await _runs(store, spec)
    stats = {s["workflow_id"]: s for s in store.run_stats()}
    wf = stats["wf"]
    assert (wf["runs"], wf["completed"], wf["failed"], wf["rolled_back"], wf["active"]) == (22, 20, 1, 1, 0)
    durations = [i + 1 for i in range(20)] + [10.0, 1.0]
    assert wf["mean_duration"] == pytest.approx(sum(durations) / 22)
    assert wf["p95_duration"] == pytest.approx(sorted(durations)[20])  # ceil(0.95 * 22) = 21st value
    assert wf["last_run"]["run_id"] == "rb" and wf["last_run"]["status"] == "rolled_back"
    zz = stats["zz"]
    assert (zz["runs"], zz["cancelled"], zz["active"]) == (2, 1, 1)
    assert zz["last_run"]["run_id"] == "live" and zz["last_run"]["finished_at"] is None
    assert [s["workflow_id"] for s in store.run_stats("zz")] == ["zz"]
    # Finishing again (recovery re-marking a run) moves the count, it does not add a run.
    await store.finish_run("bad", "interrupted", finished_at=511.0)
    wf = store.run_stats("wf")[0]
    assert (wf["runs"], wf["failed"], wf["interrupted"]) == (22, 0, 1)
    assert store.counts()["finished_runs"] == 23


async def test_finish_unknown_run_is_false(store: Store) -> None:
    assert await store.finish_run("ghost", "completed") is False


async def test_purge_deletes_old_finished_history_only(store: Store) -> None:
    now = 100 * 86400.0
    old, recent = now - 40 * 86400, now - 5 * 86400
    d_old = await store.add_detection({"type": "m"}, received_at=old, state="matched")
    d_old_queued = await store.add_detection({"type": "m"}, received_at=old)
    d_old_running = await store.add_detection({"type": "m"}, received_at=old, state="matched")
    d_recent = await store.add_detection({"type": "m"}, received_at=recent, state="matched")
    for i in range(25):
        await store.create_run(f"old{i}", "wf", d_old, started_at=old + i)
        await store.record_step_started(f"old{i}", "s", started_at=old + i)
        await store.finish_run(f"old{i}", "completed", finished_at=old + i + 1)
    await store.create_run("stuck", "wf", d_old_running, started_at=old)
    await store.create_run("new", "wf", d_recent, started_at=recent)
    await store.finish_run("new", "completed", finished_at=recent + 1)

    totals = await store.purge(30, now=now, chunk=10)
    assert totals == {"runs": 25, "detections": 1}
    assert {r["run_id"] for r in store.list_runs().items} == {"stuck", "new"}
    assert store.steps_of("old3") == []
    assert store.get_detection(d_old) is None
    assert store.get_detection(d_old_queued) is not None
    assert store.get_detection(d_old_running) is not None and store.get_detection(d_recent) is not None
    wf = store.run_stats("wf")[0]
    assert (wf["completed"], wf["active"], wf["runs"]) == (1, 1, 2)
    with pytest.raises(StoreValueError):
        await store.purge(-1)


async def test_p95_comes_from_the_most_recent_256_runs(store: Store) -> None:
    # 300 slow runs, then 256 fast ones: the slow ones have left the sample entirely.
    for i in range(300):
        store.submit(store.create_run_op(f"slow{i}", "wf", started_at=float(i)))
    await store.flush()
    for i in range(300):
        await store.finish_run(f"slow{i}", "completed", finished_at=float(i) + 100.0)
    assert store.run_stats("wf")[0]["p95_duration"] == pytest.approx(100.0)
    for i in range(256):
        await store.create_run(f"fast{i}", "wf", started_at=1000.0 + i)
        await store.finish_run(f"fast{i}", "completed", finished_at=1000.0 + i + 1.0)
    wf = store.run_stats("wf")[0]
    assert wf["p95_duration"] == pytest.approx(1.0)
    assert wf["mean_duration"] == pytest.approx((300 * 100.0 + 256 * 1.0) / 556)
    assert store._read().execute("SELECT count(*) FROM duration_samples").fetchone()[0] == 256


async def test_ring_continues_in_order_after_a_migration_backfill(db_path) -> None:  # type: ignore[no-untyped-def]
    from sdd.store.schema import MIGRATIONS, connect, migrate
    db_path.parent.mkdir(mode=0o700)
    conn = connect(db_path, writer=True)
    migrate(conn, MIGRATIONS[:1])
    # 256 old runs: durations 1..256 in finishing order; the next finishes must evict the oldest (1, 2, ...).
    conn.executemany("INSERT INTO runs (run_id, workflow_id, status, trigger, started_at, finished_at) "
                     "VALUES (?, 'wf', 'completed', 'api', 0, ?)", [(f"r{i}", float(i)) for i in range(1, 257)])
    conn.close()
    store = Store.open(db_path)
    try:
        for i in range(13):
            await store.create_run(f"n{i}", "wf", started_at=1000.0)
            await store.finish_run(f"n{i}", "completed", finished_at=1000.0)  # duration 0
        durations = sorted(r[0] for r in store._read().execute("SELECT duration FROM duration_samples"))
        assert durations == [0.0] * 13 + [float(d) for d in range(14, 257)]
    finally:
        store.close()


def test_step_json_fast_path_matches_codec() -> None:
    """Step params/results are encoded with a prebuilt encoder; it must store exactly what codec would,
    and leave what it cannot do (cycles, unserialisable values, huge values) to codec's handling."""
    import enum

    from sdd.store import codec
    from sdd.store.writes import _json

    class Colour(str, enum.Enum):
        RED = "red"

    cycle: list[Any] = []
    cycle.append(cycle)
    shared = {"a": 1}
    values: list[Any] = [{"a": 1, "b": [1, 2.5, None, True, "é\x00", "\ud800"]}, "line\u2028", 7, 2.5, None,
                         [1, (2, 3)], {"p": Path("/x")}, {"c": Colour.RED}, float("nan"), {1: 2}, {"s": {1}},
                         b"\xff", [], {}, cycle, [shared, shared], {"x": object()}, "y" * (codec.MAX_DATA_JSON + 1)]
    for value in values:
        assert _json(value, "result") == codec.dumps_lenient(value, "result"), value


def _whole_run(run_id: str, detection_id: Any, status: str = "completed", *, started: float = 100.0,
               finished: float = 102.5, steps: int = 2) -> Any:
    from sdd.engine import StepStatus
    from sdd.store.writes import record_finished_run_op, record_step_op
    rows = [record_step_op(run_id, f"s{i}", StepStatus.COMPLETED, "run", None, "action", "log", True, {"i": i}, 1,
                           started, finished, {"ok": i}, None) for i in range(steps)]
    return record_finished_run_op(run_id, "wf", detection_id, {"k": "v"}, {"workflow_id": "wf"}, "detection",
                                  started, False, None, rows, status, None, finished, {"steps_completed": steps})


async def test_a_whole_run_in_one_write_is_what_create_steps_and_finish_leave(store: Store) -> None:
    det = await store.add_detection({"type": "malware"})
    assert await store.write(_whole_run("whole", det)) is True
    run = store.get_run("whole")
    assert run is not None
    assert (run["status"], run["detection_id"], run["trigger"], run["started_at"], run["finished_at"]) == \
        ("completed", det, "detection", 100.0, 102.5)
    assert (run["context"], run["workflow"], run["result"], run["resumed"]) == \
        ({"k": "v"}, {"workflow_id": "wf"}, {"steps_completed": 2}, 0)
    assert [(s["step_id"], s["params"], s["result"]) for s in run["steps"]] == [("s0", {"i": 0}, {"ok": 0}),
                                                                                 ("s1", {"i": 1}, {"ok": 1})]
    stats = store.run_stats("wf")[0]
    assert (stats["runs"], stats["completed"], stats["mean_duration"], stats["last_run"]["run_id"]) == \
        (1, 1, 2.5, "whole")
    # A detection id that is not (or no longer) in the history is dropped, not fatal.
    assert await store.write(_whole_run("orphan", 999_999, "failed")) is True
    orphan = store.get_run("orphan")
    assert orphan is not None and orphan["detection_id"] is None and orphan["status"] == "failed"
    assert store.run_stats("wf")[0]["failed"] == 1


async def test_a_whole_run_over_an_existing_row_takes_the_general_path(store: Store) -> None:
    """Someone created the run first (pending, with its uid): the one write keeps that row's fields and
    counts the run once."""
    await store.create_run("pre", "wf", status="pending", trigger="api", uid=1000, started_at=99.0)
    assert await store.write(_whole_run("pre", None)) is True
    run = store.get_run("pre")
    assert run is not None
    assert (run["status"], run["uid"], run["trigger"], run["started_at"], len(run["steps"])) == \
        ("completed", 1000, "api", 99.0, 2)
    stats = store.run_stats("wf")[0]
    assert (stats["runs"], stats["completed"], stats["mean_duration"]) == (1, 1, 102.5 - 99.0)
