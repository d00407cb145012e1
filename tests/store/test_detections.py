"""Detections: intake replay after a crash, duplicate ids, states, paging, and hostile values."""

from __future__ import annotations

import json

import pytest

from sdd.store import DetectionState, Store, StoreValueError


async def test_same_spool_file_twice_is_one_detection(store: Store) -> None:
    first = await store.record_detection({"type": "malware", "id": "abc"}, spool_name="1700000000.1.host")
    again = await store.record_detection({"type": "malware", "id": "abc"}, spool_name="1700000000.1.host")
    assert again.replayed and again.detection_id == first.detection_id and not first.replayed
    assert len(store.list_detections().items) == 1


async def test_a_reused_spool_name_with_new_content_is_a_new_detection(store: Store) -> None:
    first = await store.record_detection({"type": "malware", "file_path": "/a"}, spool_name="detection.json")
    second = await store.record_detection({"type": "malware", "file_path": "/b"}, spool_name="detection.json")
    assert not second.replayed and second.detection_id != first.detection_id
    again = await store.record_detection({"type": "malware", "file_path": "/b"}, spool_name="detection.json")
    assert again.replayed and again.detection_id == second.detection_id


async def test_known_external_id_is_stored_as_duplicate(store: Store) -> None:
    first = await store.record_detection({"type": "malware", "id": "abc"}, spool_name="a")
    dup = await store.record_detection({"type": "malware", "id": "abc"}, spool_name="b")
    assert dup.state is DetectionState.DUPLICATE and dup.duplicate_of == first.detection_id
    row = store.get_detection(dup.detection_id)
    assert row is not None and row["state"] == "duplicate" and row["data"]["id"] == "abc"
    assert store.find_detection("abc")["detection_id"] == first.detection_id  # type: ignore[index]
    assert store.pending_detections() == [store.get_detection(first.detection_id)]


async def test_columns_are_extracted_and_data_kept_whole(store: Store) -> None:
    data = {"type": "malware", "severity": "critical", "file_path": "/home/a/x.exe", "threat_name": "Eicar",
            "sha256": "AB" * 32, "process_id": 42, "nested": {"deep": [1, 2, {"x": None}]}}
    did = await store.add_detection(data, received_at=123.5)
    row = store.get_detection(did)
    assert row is not None
    assert (row["type"], row["severity"], row["file_path"], row["threat_name"]) == \
        ("malware", "critical", "/home/a/x.exe", "Eicar")
    assert row["sha256"] == "ab" * 32 and row["received_at"] == 123.5 and row["state"] == "queued"
    assert row["data"] == data


async def test_states_and_pending_queue(store: Store) -> None:
    ids = [await store.add_detection({"type": "m", "n": i}, received_at=float(i)) for i in range(5)]
    assert await store.set_detection_state(ids[1], "matched")
    assert await store.set_detection_state(ids[3], DetectionState.NO_MATCH, note="no workflow")
    store.submit_detection_state(ids[4], "excluded", "hash excluded")
    await store.flush()
    assert [d["detection_id"] for d in store.pending_detections(10)] == [ids[0], ids[2]]
    assert store.get_detection(ids[3])["note"] == "no workflow"  # type: ignore[index]
    assert store.counts()["queued_detections"] == 2
    assert not await store.set_detection_state("999", "matched")
    with pytest.raises(StoreValueError, match="state"):
        await store.set_detection_state(ids[0], "eaten")
    with pytest.raises(StoreValueError, match="detection_id"):
        await store.set_detection_state("1; DROP TABLE runs", "matched")


async def test_list_detections_pages_and_filters(store: Store) -> None:
    for i in range(12):
        await store.add_detection({"type": "malware" if i % 2 else "pup", "severity": "high" if i % 3 else "low"},
                                  received_at=float(i // 4), state="matched" if i % 4 else "queued")
    seen, cursor = [], None
    while True:
        page = store.list_detections(limit=5, cursor=cursor)
        seen += [d["detection_id"] for d in page.items]
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == [str(i) for i in sorted(range(1, 13), key=lambda i: ((i - 1) // 4, i), reverse=True)]
    assert {d["type"] for d in store.list_detections(type="pup").items} == {"pup"}
    assert len(store.list_detections(state="queued").items) == 3
    assert all(d["severity"] == "low" for d in store.list_detections(severity="low").items)
    assert len(store.list_detections(since=1.0, until=2.0).items) == 4
    assert len(store.list_detections(state="matched", type="malware").items) == 6


@pytest.mark.parametrize("bad", [None, [], "text", {"type": ""}, {"type": 5}, {"severity": "x"}])
async def test_detection_without_string_type_is_refused(store: Store, bad: object) -> None:
    with pytest.raises(StoreValueError):
        await store.add_detection(bad)  # type: ignore[arg-type]


async def test_hostile_values_are_stored_cleanly(store: Store) -> None:
    data = {"type": "malware", "file_path": "/tmp/\udcff\udcfe-bad\x00utf8", "threat_name": "\ud800lone",
            "id": "nul\x00id", "weird": "\x00" * 10, "big_int": 2**80, "nan": float("nan")}
    did = await store.add_detection(data, spool_name="spool\udcffname")
    row = store.get_detection(did)
    assert row is not None
    assert row["file_path"] == "/tmp/\\udcff\\udcfe-bad\\x00utf8"  # column: valid UTF-8, visible escapes
    assert row["threat_name"] == "\\ud800lone"
    raw = row["data"]
    assert raw["file_path"] == data["file_path"] and raw["weird"] == data["weird"]  # data: exact round trip
    assert raw["big_int"] == 2**80 and raw["nan"] != raw["nan"]
    # Reading back through SQL never hits a decoding error.
    for (value,) in store._read().execute("SELECT raw FROM detections"):
        json.loads(value)


async def test_undecodable_bytes_are_kept_visible(store: Store) -> None:
    did = await store.add_detection({"type": "m", "file_path": b"/tmp/\xff\xfe", "blob": b"ok\x00\x80"})
    row = store.get_detection(did)
    assert row is not None
    assert row["file_path"] is None  # not a string: not searchable as a path, but kept in the data
    assert row["data"]["file_path"] == "/tmp/\\xff\\xfe" and row["data"]["blob"] == "ok\x00\\x80"


async def test_huge_and_deep_detections_are_refused_with_a_reason(store: Store) -> None:
    with pytest.raises(StoreValueError, match="more than"):
        await store.add_detection({"type": "m", "blob": "x" * (5 * 1024 * 1024)})
    deep: object = "leaf"
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(StoreValueError, match="nested too deeply"):
        await store.add_detection({"type": "m", "deep": deep})
    with pytest.raises(StoreValueError, match="not JSON-serialisable"):
        await store.add_detection({"type": "m", "obj": object()})
    assert store.list_detections().items == []


async def test_huge_step_results_are_truncated_not_lost(store: Store) -> None:
    await store.create_run("r", "wf")
    deep: object = 1
    for _ in range(100_000):
        deep = {"d": deep}
    await store.record_step_finished("r", "big", "completed", result={"blob": "y" * (3 * 1024 * 1024)},
                                     error="e" * 200_000)
    await store.record_step_finished("r", "deep", "completed", result=deep)
    await store.record_step_finished("r", "odd", "completed", result={"obj": object()})
    steps = {s["step_id"]: s for s in store.steps_of("r")}
    assert steps["big"]["result"]["truncated"] is True and steps["big"]["result"]["size"] > 3 * 1024 * 1024
    assert len(steps["big"]["error"]) < 70_000 and "more characters" in steps["big"]["error"]
    assert "nested too deeply" in steps["deep"]["result"]["unserialisable"]
    assert "object" in steps["odd"]["result"]["unserialisable"]


async def test_recent_run_finds_the_same_file_and_threat_within_the_window(store: Store) -> None:
    a = await store.add_detection({"type": "m", "file_path": "/tmp/x", "threat_name": "T"}, received_at=100.0)
    b = await store.add_detection({"type": "m", "file_path": "/tmp/x", "threat_name": "T"}, received_at=150.0)
    c = await store.add_detection({"type": "m", "file_path": "/tmp/x", "threat_name": "Other"}, received_at=150.0)
    await store.create_run("ra", "wf", a, started_at=101.0)
    await store.create_run("rc", "wf", c, started_at=151.0)
    assert store.recent_run("wf", "/tmp/x", "T", since=90.0) == "ra"
    assert store.recent_run("wf", "/tmp/x", "T", since=120.0) is None  # outside the window
    assert store.recent_run("other_wf", "/tmp/x", "T", since=0.0) is None
    await store.create_run("rb", "wf", b, started_at=152.0)
    assert store.recent_run("wf", "/tmp/x", "T", since=90.0) == "rb"
    n = await store.add_detection({"type": "m"}, received_at=160.0)
    await store.create_run("rn", "wf", n, started_at=161.0)
    assert store.recent_run("wf", None, None, since=0.0) == "rn"  # NULLs match NULLs (IS, not =)
    plan = " ".join(str(r) for r in store._read().execute(
        "EXPLAIN QUERY PLAN SELECT r.run_id FROM detections d JOIN runs r ON r.detection_id = d.id "
        "WHERE d.file_path IS ? AND d.threat_name IS ? AND r.workflow_id = ? AND r.started_at >= ? "
        "ORDER BY r.started_at DESC LIMIT 1", ("/tmp/x", "T", "wf", 0.0)))
    assert "SCAN" not in plan.replace("SCAN CONSTANT", "")


async def test_a_batch_of_detections_is_one_write_and_fails_as_a_whole(store: Store) -> None:
    """What the daemon's intake commit relies on: one durable write for a whole batch, results in order;
    if one of them fails nothing of the batch is committed (the daemon then writes them one by one)."""
    import sqlite3

    from sdd.store.writes import record_detection_op, record_detections_op

    ops = [record_detection_op({"type": "m", "id": f"e{i}"}, f"f{i}", None, "queued", None) for i in range(3)]
    added = await store.write(record_detections_op(ops), durable=True)
    assert [a.state for a in added] == [DetectionState.QUEUED] * 3
    assert [store.get_detection(a.detection_id)["spool_name"] for a in added] == ["f0", "f1", "f2"]  # type: ignore[index]

    def broken(conn: sqlite3.Connection) -> None:
        raise sqlite3.IntegrityError("boom")

    good = record_detection_op({"type": "m", "id": "e9"}, "f9", None, "queued", None)
    with pytest.raises(sqlite3.IntegrityError):
        await store.write(record_detections_op([good, broken]), durable=True)
    assert store.find_detection("e9") is None
    assert (await store.write(good, durable=True)).state == DetectionState.QUEUED
