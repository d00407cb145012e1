"""The dispatcher in this process, on real parts and no daemon: a real store on a temporary SQLite file, a
real engine with the history recorder listening, a real hub, a real intake on a temporary spool. What it
commits, decides and starts is read back from the database and the hub."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sdd import hub as events
from sdd.daemon.reporting import RunReporter
from sdd.dispatch.dispatcher import READY_WINDOW, RECORDING_RUNS_FACTOR, Dispatcher, DispatchSettings
from sdd.engine import Workflow, WorkflowEngine
from sdd.engine.events import RunStarted
from sdd.errors import NotAccepting
from sdd.history.recorder import HistoryRecorder
from sdd.hub import EventHub, Subscription
from sdd.intake.watch import Intake
from sdd.labels import DETECTION_ID, EXTERNAL_ID, TRIGGER, UID
from sdd.store import Store
from sdd.store.writes import record_detection_op, record_detections_op


@dataclass
class Life:
    """The daemon's life as the dispatcher sees it."""

    stopping: bool = False
    running: bool = True


@dataclass
class Centre:
    store: Store
    hub: EventHub
    engine: WorkflowEngine
    dispatcher: Dispatcher
    life: Life
    acted: list[str] = field(default_factory=list)   # file paths the workflow's step acted on

    async def settled(self, detection_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The detection once it left `queued` and every run it started has finished, committed."""
        deadline = time.monotonic() + timeout
        while True:
            await self.store.flush()
            row = self.store.get_detection(detection_id)
            if row is not None and row["state"] != "queued" and not self.engine.active_runs:
                return row
            assert time.monotonic() < deadline, f"detection {detection_id} still {row and row['state']}"
            await asyncio.sleep(0.01)


def _workflow() -> Workflow:
    return Workflow.from_dict({
        "workflow_id": "contain", "name": "contain", "trigger": {"type": "malware"},
        "steps": [{"step_id": "act", "type": "action", "action": "record",
                   "params": {"path": "{{ detection.file_path }}"}}]})


@pytest.fixture
async def centre(tmp_path: Path) -> AsyncIterator[Centre]:
    store = Store.open(tmp_path / "state" / "sdd.db")
    hub = EventHub()
    acted: list[str] = []

    async def record(*, context: dict[str, Any], path: str) -> dict[str, Any]:
        acted.append(path)
        return {"path": path}

    engine = WorkflowEngine(workflows={"contain": _workflow()})
    engine.register_action("record", record, idempotent=True)
    tasks: set[asyncio.Task[Any]] = set()

    def spawn(coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    life = Life()
    settings = DispatchSettings(max_concurrent_runs=4, dedup_window=0.0, max_queued=100)
    dispatcher = Dispatcher(store, hub, engine, {"received": 0, "rejected": 0, "duplicates": 0, "excluded": 0,
                                                 "no_match": 0, "runs_started": 0}, settings,
                            life=life, spawn=spawn)
    engine.add_listener(HistoryRecorder(store, on_run_recorded=dispatcher.run_recorded))
    loop = spawn(dispatcher.run(), "dispatcher")
    try:
        yield Centre(store, hub, engine, dispatcher, life, acted)
    finally:
        await _stop(life, dispatcher, loop, list(tasks))


async def _stop(life: Life, dispatcher: Dispatcher, loop: asyncio.Future[Any], tasks: list[asyncio.Task[Any]]) -> None:
    """Stop the dispatch loop, let the runs and spawned tasks end, close the store."""
    life.stopping = True
    dispatcher.wake.set()
    await asyncio.wait_for(loop, 10)
    for handle in list(dispatcher.engine.active_runs.values()):
        await handle.wait()
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    dispatcher.store.close()


async def _names_until(sub: Subscription, last: str) -> list[str]:
    """The names of the events published, up to the first `last`."""
    names: list[str] = []
    while not names or names[-1] != last:
        names.append((await asyncio.wait_for(sub.get(), 10))[0])
    return names


async def test_a_submitted_detection_is_committed_matched_and_its_run_labelled_with_its_ids(centre: Centre) -> None:
    sub = centre.hub.subscribe()
    started: list[Any] = []
    centre.engine.add_listener(lambda ev: started.append(ev.labels) if isinstance(ev, RunStarted) else None)
    added = await centre.dispatcher.submit({"type": "malware", "id": "av-17", "file_path": "/tmp/x"})
    row = await centre.settled(added.detection_id)
    assert row["state"] == "matched" and centre.acted == ["/tmp/x"]
    runs = centre.store.runs_for_detection(added.detection_id)
    assert [(r["workflow_id"], r["status"], r["trigger"]) for r in runs] == [("contain", "completed", "detection")]
    assert [dict(labels) for labels in started] == [
        {DETECTION_ID: added.detection_id, EXTERNAL_ID: "av-17", TRIGGER: "detection"}]
    assert await _names_until(sub, events.DETECTION_MATCHED) == [events.DETECTION_RECEIVED, events.DETECTION_MATCHED]
    assert centre.dispatcher.stats["received"] == 1 and centre.dispatcher.stats["runs_started"] == 1
    assert centre.dispatcher.queued == 0


async def test_a_detection_no_workflow_triggers_on_is_marked_no_match_and_announced(centre: Centre) -> None:
    sub = centre.hub.subscribe()
    added = await centre.dispatcher.submit({"type": "pua", "file_path": "/tmp/y"})
    row = await centre.settled(added.detection_id)
    assert row["state"] == "no_match" and centre.acted == []
    assert centre.store.runs_for_detection(added.detection_id) == []
    assert await _names_until(sub, events.DETECTION_NO_MATCH) == [events.DETECTION_RECEIVED, events.DETECTION_NO_MATCH]
    assert centre.dispatcher.stats["no_match"] == 1


async def test_an_exclusion_added_to_the_store_is_seen_by_the_next_detection(centre: Centre) -> None:
    first = await centre.dispatcher.submit({"type": "malware", "file_path": "/srv/app/tool"})
    assert (await centre.settled(first.detection_id))["state"] == "matched"
    await centre.store.add_exclusion("path", "/srv/app", "a known tool", "uid:0")
    second = await centre.dispatcher.submit({"type": "malware", "file_path": "/srv/app/tool"})
    assert (await centre.settled(second.detection_id))["state"] == "excluded"
    assert centre.acted == ["/srv/app/tool"]


async def test_the_same_producer_id_again_is_a_duplicate_and_starts_nothing(centre: Centre) -> None:
    first = await centre.dispatcher.submit({"type": "malware", "id": "same", "file_path": "/tmp/a"})
    await centre.settled(first.detection_id)
    again = await centre.dispatcher.submit({"type": "malware", "id": "same", "file_path": "/tmp/a"})
    assert again.duplicate_of == first.detection_id
    assert (await centre.settled(again.detection_id))["state"] == "duplicate"
    assert centre.acted == ["/tmp/a"] and centre.dispatcher.stats["duplicates"] == 1


async def test_a_requested_run_records_its_sample_detection_as_matched_and_carries_the_caller(
        centre: Centre) -> None:
    started = await centre.dispatcher.start_requested(_workflow(), {"why": "test"},
                                                      {"type": "malware", "id": "sample", "file_path": "/tmp/s"},
                                                      uid=1000)
    assert dict(started.handle.labels) == {DETECTION_ID: started.detection_id, EXTERNAL_ID: "sample",
                                           TRIGGER: "api", UID: "1000"}
    assert (await started.handle.wait()).status.value == "completed"
    assert started.detection_id is not None
    row = await centre.settled(started.detection_id)
    assert row["state"] == "matched"
    # A sample claims no producer id: the same id arriving for real is no duplicate of it.
    real = await centre.dispatcher.submit({"type": "malware", "id": "sample", "file_path": "/tmp/s"})
    assert real.duplicate_of is None
    run = centre.store.get_run(started.handle.run_id)
    assert run is not None and (run["trigger"], run["uid"], run["detection_id"]) == \
        ("api", 1000, started.detection_id)


async def test_a_stopping_dispatcher_accepts_nothing_new(centre: Centre) -> None:
    centre.life.stopping = True
    with pytest.raises(NotAccepting):
        await centre.dispatcher.submit({"type": "malware"})
    with pytest.raises(NotAccepting):
        await centre.dispatcher.start_requested(_workflow(), None, None, uid=None)
    assert centre.store.counts().get("detections", 0) == 0


async def test_a_spool_file_is_committed_before_intake_deletes_it(centre: Centre, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    first_scan = asyncio.Event()
    loop = asyncio.get_running_loop()
    intake = Intake(spool, centre.dispatcher.deliver, rescan_interval=3600.0,
                    on_first_scan=lambda: loop.call_soon_threadsafe(first_scan.set))
    centre.dispatcher.attach_intake(intake)
    (spool / "tmp").mkdir(parents=True, exist_ok=True)
    (spool / "new").mkdir(parents=True, exist_ok=True)
    (spool / "tmp" / "one.json").write_text(json.dumps({"type": "malware", "file_path": "/tmp/spooled"}))
    os.rename(spool / "tmp" / "one.json", spool / "new" / "one.json")
    intake.start()
    try:
        await asyncio.wait_for(first_scan.wait(), 10)
        found = await _until(lambda: centre.store.list_detections(limit=5).to_dict()["items"])
        row = await centre.settled(str(found[0]["detection_id"]))
        assert row["state"] == "matched" and row["spool_name"] == "one.json"
        await _until(lambda: not os.listdir(spool / "new") and not os.listdir(spool / "cur"))
        assert centre.acted == ["/tmp/spooled"]
    finally:
        await asyncio.to_thread(intake.stop)


async def test_a_spool_file_goes_only_after_a_flush_of_the_wal_that_covers_its_detection(
        centre: Centre, tmp_path: Path) -> None:
    """The detection is queued as soon as it is committed, but intake deletes its file only after a flush of
    the store to disk (an fdatasync of the WAL) that began after that commit."""
    spool = tmp_path / "spool"
    seen: list[tuple[list[str], list[str]]] = []
    intake = Intake(spool, centre.dispatcher.deliver, rescan_interval=3600.0)
    centre.dispatcher.attach_intake(intake)
    flush = intake.make_durable
    assert flush is not None

    def flush_and_look() -> None:
        rows = centre.store._read().execute("SELECT spool_name FROM detections").fetchall()
        seen.append(([r[0] for r in rows], sorted(os.listdir(spool / "cur"))))  # committed, file still there
        flush()

    intake.make_durable = flush_and_look
    (spool / "tmp").mkdir(parents=True, exist_ok=True)
    (spool / "new").mkdir(parents=True, exist_ok=True)
    intake.start()
    try:
        (spool / "tmp" / "two.json").write_text(json.dumps({"type": "malware", "file_path": "/tmp/two"}))
        os.rename(spool / "tmp" / "two.json", spool / "new" / "two.json")
        # new/ first: a file moves new/ -> cur/ -> gone, so looking at cur/ first could miss it in between.
        await _until(lambda: not os.listdir(spool / "new") and not os.listdir(spool / "cur"))
        assert seen and seen[0] == (["two.json"], ["two.json"])
        await _until(lambda: centre.acted == ["/tmp/two"])
    finally:
        await asyncio.to_thread(intake.stop)


async def test_spool_files_whose_commit_failed_are_delivered_again_while_the_daemon_runs(
        centre: Centre, tmp_path: Path) -> None:
    """They stayed in cur/ until a restart: a database that failed for a while left them unprocessed."""
    spool = tmp_path / "spool"
    intake = Intake(spool, centre.dispatcher.deliver, rescan_interval=3600.0)
    centre.dispatcher.attach_intake(intake)
    (spool / "tmp").mkdir(parents=True, exist_ok=True)
    (spool / "new").mkdir(parents=True, exist_ok=True)
    writer = centre.store._writer._conn
    writer.execute("PRAGMA query_only = 1")  # every write fails: "attempt to write a readonly database"
    intake.start()
    try:
        for name in ("a", "b", "c"):
            (spool / "tmp" / name).write_text(json.dumps({"type": "malware", "file_path": f"/tmp/{name}"}))
            os.rename(spool / "tmp" / name, spool / "new" / name)
        await _until(lambda: intake.stats["retried"] >= 3, timeout=30)  # delivered again, failed again
        assert sorted(os.listdir(spool / "cur")) == ["a", "b", "c"] and not centre.store.list_detections(limit=10).to_dict()["items"]
        writer.execute("PRAGMA query_only = 0")
        await _until(lambda: not os.listdir(spool / "cur"), timeout=30)
        rows = centre.store.list_detections(limit=10).to_dict()["items"]
        assert sorted(r["spool_name"] for r in rows) == ["a", "b", "c"]
        await _until(lambda: sorted(centre.acted) == ["/tmp/a", "/tmp/b", "/tmp/c"])
    finally:
        await asyncio.to_thread(intake.stop)


async def _until(probe: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.01)
    return value


async def test_a_backlog_bigger_than_the_ready_window_leaves_nothing_queued(centre: Centre) -> None:
    """More queued detections in the database than the dispatcher keeps in memory, none of which starts a run:
    a refill that finds only detections whose state write is still in flight must be tried again once those
    writes are committed, or the rest stays queued until the next start."""
    total = READY_WINDOW * 2 + 500
    ops = [record_detection_op({"type": "pua", "file_path": f"/tmp/b{i}"}, None, None, "queued", None)
           for i in range(total)]
    await centre.store.write(record_detections_op(ops), durable=True)
    centre.dispatcher.queued = total
    centre.dispatcher.wake.set()
    await _until(lambda: centre.store.counts().get("queued_detections", 0) == 0 and not centre.dispatcher.queued)
    assert centre.store.list_detections(limit=1, state="no_match").to_dict()["items"]
    assert centre.dispatcher.stats["no_match"] == total


async def test_runs_waiting_only_for_their_record_s_commit_hand_their_slots_on_up_to_a_bound(tmp_path: Path) -> None:
    """A run whose steps are done and whose final record is being committed acts no more: its slot goes to
    the next detection, up to RECORDING_RUNS_FACTOR x the limit, so a slow commit does not idle the slots.
    The commit is held up for real, by another connection holding the database's write lock."""
    limit, total = 2, 20
    bound = limit + RECORDING_RUNS_FACTOR * limit
    store = Store.open(tmp_path / "state" / "sdd.db")
    hub = EventHub()
    acted: list[str] = []
    go = asyncio.Event()

    async def gate(*, context: dict[str, Any], path: str) -> dict[str, Any]:
        await go.wait()
        acted.append(path)
        return {"path": path}

    engine = WorkflowEngine(workflows={"contain": Workflow.from_dict({
        "workflow_id": "contain", "name": "contain", "trigger": {"type": "malware"},
        "steps": [{"step_id": "act", "type": "action", "action": "gate",
                   "params": {"path": "{{ detection.file_path }}"}}]})})
    engine.register_action("gate", gate, idempotent=True)
    life = Life()
    tasks: list[asyncio.Task[Any]] = []
    dispatcher = Dispatcher(store, hub, engine, dict.fromkeys(
        ("received", "rejected", "duplicates", "excluded", "no_match", "runs_started", "runs_finished"), 0),
        DispatchSettings(max_concurrent_runs=limit, dedup_window=0.0, max_queued=100), life=life,
        spawn=lambda coro, name: tasks.append(asyncio.ensure_future(coro)))
    recorder = HistoryRecorder(store, on_run_recorded=dispatcher.run_recorded)
    engine.add_listener(RunReporter(engine, recorder, hub, dispatcher.stats, None, slot_freed=dispatcher.run_finished,
                                    run_waiting=dispatcher.run_waiting, run_recording=dispatcher.run_recording,
                                    on_change=lambda: None))
    loop = asyncio.ensure_future(dispatcher.run())
    lock = sqlite3.connect(store.path, isolation_level=None)
    try:
        added = [await dispatcher.submit({"type": "malware", "file_path": f"/tmp/r{i}"}) for i in range(total)]
        await _until(lambda: len(engine.active_runs) == limit)
        lock.execute("BEGIN IMMEDIATE")  # from here no commit of the store's lands
        go.set()
        await _until(lambda: len(acted) == bound and len(dispatcher.recording_runs) == bound)
        for _ in range(200):  # nothing but the loop could start another run: give it every chance to
            await asyncio.sleep(0)
        assert len(acted) == bound and len(engine.active_runs) == bound, "the bound holds"
        assert store.get_detection(added[-1].detection_id)["state"] == "queued"
        lock.execute("ROLLBACK")
        await _until(lambda: len(acted) == total and not engine.active_runs)
        await store.flush()
        runs = [store.runs_for_detection(a.detection_id) for a in added]
        assert [[r["status"] for r in rs] for rs in runs] == [["completed"]] * total
        assert sorted(acted) == sorted(f"/tmp/r{i}" for i in range(total))
        assert not dispatcher.recording_runs and not dispatcher.waiting_runs
    finally:
        lock.close()
        go.set()
        await _stop(life, dispatcher, loop, tasks)
