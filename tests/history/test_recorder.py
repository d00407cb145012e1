"""The history recorder on a real engine: intent before action, outcomes, final status, resume records."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sdd.engine import StepStatus, Workflow, WorkflowEngine
from sdd.history.recorder import HistoryRecorder, prior_steps
from sdd.labels import Trigger, run_labels
from sdd.store import Store


def _peek_step(db: Path, run_id: str, step_id: str) -> tuple[str, int] | None:
    """What another process would find on disk right now (a fresh connection, no shared cache)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT status, attempts FROM steps WHERE run_id = ? AND step_id = ? AND phase = 'run'",
                           (run_id, step_id)).fetchone()
        return None if row is None else (row[0], row[1])
    finally:
        conn.close()


def _workflow(**extra: Any) -> Workflow:
    return Workflow.from_dict({"workflow_id": "wf", "name": "test", **extra, "steps": [
        {"step_id": "scan", "type": "action", "action": "safe", "params": {"path": "{{ detection.file_path }}"}},
        {"step_id": "hook", "type": "action", "action": "unsafe", "params": {"n": 1}},
        {"step_id": "never", "type": "action", "action": "safe", "condition": "False"},
    ]})


async def test_non_idempotent_intent_is_on_disk_before_the_action_runs(store: Store, db_path: Path) -> None:
    seen: list[Any] = []
    engine = WorkflowEngine(listeners=[HistoryRecorder(store)])

    async def safe(*, context: dict[str, Any], **params: Any) -> dict[str, Any]:
        return {"scanned": params.get("path")}

    async def unsafe(*, context: dict[str, Any], **params: Any) -> str:
        from sdd.engine import current_step
        seen.append(_peek_step(db_path, current_step().run_id, "hook"))
        return "posted"

    engine.register_action("safe", safe, idempotent=True)
    engine.register_action("unsafe", unsafe, idempotent=False)
    det = await store.add_detection({"type": "malware", "id": "ext-1", "file_path": "/tmp/f"})
    handle = engine.start(_workflow(), {"who": "me"}, detection={"type": "malware", "id": "ext-1",
                                                                  "file_path": "/tmp/f"},
                          labels=run_labels(detection_id=det, external_id="ext-1", trigger=Trigger.DETECTION))
    result = await handle.wait()
    assert result.status.value == "completed"
    assert seen == [("running", 1)]
    # RunFinished was awaited: the final state is readable without a flush.
    run = store.get_run(handle.run_id)
    assert run is not None and run["status"] == "completed" and run["detection_id"] == det
    assert run["workflow"]["workflow_id"] == "wf" and run["trigger"] == "detection"
    steps = {s["step_id"]: s for s in run["steps"]}
    assert steps["scan"]["result"] == {"scanned": "/tmp/f"} and steps["scan"]["params"] == {"path": "/tmp/f"}
    assert steps["hook"]["status"] == "completed" and steps["hook"]["idempotent"] is False
    assert steps["never"]["status"] == "skipped"
    assert run["result"]["steps_completed"] == 2
    assert store.run_stats("wf")[0]["completed"] == 1


async def test_the_run_labels_set_detection_trigger_and_uid(store: Store) -> None:
    recorder = HistoryRecorder(store)
    engine = WorkflowEngine(listeners=[recorder])

    async def safe(*, context: dict[str, Any], **params: Any) -> None:
        return None

    engine.register_action("safe", safe, idempotent=True)
    engine.register_action("unsafe", safe, idempotent=False)
    det = await store.add_detection({"type": "malware"})
    await engine.execute_workflow(_workflow(), run_id="run-a", detection={"type": "malware"}, dry_run=True,
                                  labels=run_labels(detection_id=det, external_id=None, trigger=Trigger.API, uid=1000))
    run = store.get_run("run-a")
    assert run is not None
    assert (run["detection_id"], run["trigger"], run["uid"], run["dry_run"]) == (det, "api", 1000, True)


async def test_resume_after_crash_reuses_results_and_interrupts_unsafe_step(store: Store) -> None:
    calls: list[str] = []

    async def safe(*, context: dict[str, Any], **params: Any) -> str:
        calls.append("safe")
        return "ok"

    async def unsafe(*, context: dict[str, Any], **params: Any) -> str:
        calls.append("unsafe")
        return "posted"

    # What a crash leaves behind: the run running, `scan` done, `hook`'s intent without an outcome.
    wf = _workflow()
    await store.create_run("crashed", "wf", None, {}, wf.to_dict(), started_at=10.0)
    await store.record_step_started("crashed", "scan", action="safe", idempotent=True)
    await store.record_step_finished("crashed", "scan", "completed", attempts=1, result="earlier")
    await store.record_step_started("crashed", "hook", action="unsafe", idempotent=False, attempt=1)

    recorder = HistoryRecorder(store)
    prior = recorder.prior_steps("crashed")
    assert prior["scan"].status is StepStatus.COMPLETED and prior["scan"].result == "earlier"
    assert prior["hook"].status is StepStatus.RUNNING and prior["hook"].attempts == 1
    assert prior == prior_steps(store, "crashed")

    engine = WorkflowEngine(listeners=[recorder])
    engine.register_action("safe", safe, idempotent=True)
    engine.register_action("unsafe", unsafe, idempotent=False)
    snapshot = Workflow.from_dict(store.get_run("crashed")["workflow"])  # type: ignore[index]
    result = await engine.execute_workflow(snapshot, run_id="crashed", prior=prior)
    assert result.status.value == "interrupted"
    assert calls == []  # nothing re-run: scan reused, hook never repeated by the daemon's own choice
    run = store.get_run("crashed")
    assert run is not None and run["status"] == "interrupted" and run["resumed"] == 1
    assert run["started_at"] == 10.0
    assert {s["step_id"]: s["status"] for s in run["steps"]}["hook"] == "interrupted"


async def test_on_interrupt_retry_runs_the_unsafe_step_again(store: Store) -> None:
    calls: list[str] = []

    async def act(*, context: dict[str, Any], **params: Any) -> str:
        calls.append("x")
        return "done"

    wf = _workflow(on_interrupt="retry")
    await store.create_run("r", "wf", None, {}, wf.to_dict())
    await store.record_step_finished("r", "scan", "completed", attempts=1, result="earlier")
    await store.record_step_started("r", "hook", action="unsafe", attempt=1)
    recorder = HistoryRecorder(store)
    engine = WorkflowEngine(listeners=[recorder])
    engine.register_action("safe", act, idempotent=True)
    engine.register_action("unsafe", act, idempotent=False)
    result = await engine.execute_workflow(wf, run_id="r", prior=recorder.prior_steps("r"))
    assert result.status.value == "completed" and calls == ["x"]
    hook = {s["step_id"]: s for s in store.steps_of("r")}["hook"]
    assert hook["status"] == "completed"


async def test_a_closed_store_stops_only_the_steps_that_need_an_intent(db_path: Path) -> None:
    """Without a history the idempotent steps still run (a crash would re-run them anyway); a step that
    must not run twice does not run at all, since its intent cannot go on disk first."""
    store = Store.open(db_path)
    engine = WorkflowEngine(listeners=[HistoryRecorder(store)])
    acted: list[str] = []

    async def act(*, context: dict[str, Any], **params: Any) -> str:
        from sdd.engine import current_step
        acted.append(current_step().step_id)
        return "ok"

    engine.register_action("safe", act, idempotent=True)
    engine.register_action("unsafe", act, idempotent=False)
    store.close()
    result = await engine.execute_workflow(_workflow(), detection={"type": "m", "file_path": "/x"})
    assert acted == ["scan"]
    assert result.status.value == "failed"
    assert result.step_results["scan"].status.value == "completed"
    assert "could not record the step's intent" in (result.step_results["hook"].error or "")


async def test_an_idempotent_step_is_one_write_holding_its_intent_and_outcome(store: Store) -> None:
    """Idempotent steps need no intent committed before they act (a crash re-runs them), so a quick one
    costs one row write carrying what the intent would have said (params, idempotent) and the outcome."""
    async def safe(*, context: dict[str, Any], **params: Any) -> dict[str, Any]:
        return {"seen": params["path"]}

    engine = WorkflowEngine(listeners=[HistoryRecorder(store)])
    engine.register_action("safe", safe, idempotent=True)
    wf = Workflow.from_dict({"workflow_id": "wf", "name": "one", "steps": [
        {"step_id": "scan", "type": "action", "action": "safe", "params": {"path": "{{ detection.file_path }}"}},
        {"step_id": "never", "type": "action", "action": "safe", "condition": "False"}]})
    await store.flush()
    before = store.writer_stats().operations
    result = await engine.execute_workflow(wf, run_id="one", detection={"type": "m", "file_path": "/tmp/x"})
    assert result.status.value == "completed"
    # create_run, one row per step (the skipped one too), finish_run: no separate intents.
    assert store.writer_stats().operations - before == 4
    steps = {s["step_id"]: s for s in store.steps_of("one")}
    scan = steps["scan"]
    assert (scan["status"], scan["attempts"], scan["idempotent"], scan["action"], scan["step_type"]) == \
        ("completed", 1, True, "safe", "action")
    assert scan["params"] == {"path": "/tmp/x"} and scan["result"] == {"seen": "/tmp/x"}
    assert scan["started_at"] is not None and scan["finished_at"] >= scan["started_at"]
    assert steps["never"]["status"] == "skipped"


async def test_a_slow_idempotent_step_shows_as_running_then_finishes_in_the_same_row(store: Store,
                                                                                     db_path: Path) -> None:
    import asyncio

    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(*, context: dict[str, Any], **params: Any) -> str:
        entered.set()
        await release.wait()
        return "done"

    recorder = HistoryRecorder(store)
    engine = WorkflowEngine(listeners=[recorder])
    engine.register_action("safe", slow, idempotent=True)
    wf = Workflow.from_dict({"workflow_id": "wf", "name": "slow", "steps": [
        {"step_id": "scan", "type": "action", "action": "safe", "params": {"n": 2}}]})
    handle = engine.start(wf, run_id="slow")
    await entered.wait()
    await store.flush()
    assert _peek_step(db_path, "slow", "scan") is None  # held: a crash now re-runs it, as with an intent
    recorder._flush(0.0)  # what the timer does for a step still running after the delay
    await store.flush()
    assert _peek_step(db_path, "slow", "scan") == ("running", 1)
    step = store.steps_of("slow")[0]
    assert step["params"] == {"n": 2} and step["idempotent"] is True
    release.set()
    assert (await handle.wait()).status.value == "completed"
    assert [(s["step_id"], s["status"], s["result"], s["params"]) for s in store.steps_of("slow")] == \
        [("scan", "completed", "done", {"n": 2})]


def _peek_run(db: Path, run_id: str) -> str | None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else row[0]
    finally:
        conn.close()


def _blocking_engine(recorder: HistoryRecorder) -> tuple[WorkflowEngine, Any, Any, list[Any]]:
    """An engine with `safe` (idempotent, waits for `release`) and `unsafe` (records what is on disk)."""
    import asyncio

    entered, release = asyncio.Event(), asyncio.Event()
    seen: list[Any] = []

    async def safe(*, context: dict[str, Any], **params: Any) -> str:
        entered.set()
        await release.wait()
        return "scanned"

    async def unsafe(*, context: dict[str, Any], **params: Any) -> str:
        from sdd.engine import current_step
        seen.append(current_step().run_id)
        return "posted"

    engine = WorkflowEngine(listeners=[recorder])
    engine.register_action("safe", safe, idempotent=True)
    engine.register_action("unsafe", unsafe, idempotent=False)
    return engine, entered, release, seen


async def test_a_detection_run_is_held_and_written_whole_when_it_finishes(store: Store, db_path: Path) -> None:
    """A run a detection started, all of whose steps may simply be run again: no row until it ends (a crash
    leaves its detection queued, so it is dispatched again), then one write with its row already final, its
    steps and the aggregates; `on_run_recorded` fires once, when that write is enqueued."""
    recorded: list[tuple[str, str | None]] = []
    recorder = HistoryRecorder(store, on_run_recorded=lambda rid, did: recorded.append((rid, did)))
    engine, entered, release, _ = _blocking_engine(recorder)
    det = await store.add_detection({"type": "malware", "file_path": "/tmp/h"})
    wf = Workflow.from_dict({"workflow_id": "wf", "name": "held", "steps": [
        {"step_id": "first", "type": "action", "action": "safe", "params": {"n": 1}},
        {"step_id": "never", "type": "action", "action": "safe", "condition": "False"}]})
    await store.flush()
    before = store.writer_stats().operations
    handle = engine.start(wf, run_id="held", detection={"type": "malware", "file_path": "/tmp/h"},
                          labels=run_labels(detection_id=det, external_id=None, trigger=Trigger.DETECTION))
    await entered.wait()
    await store.flush()
    assert _peek_run(db_path, "held") is None and _peek_step(db_path, "held", "first") is None
    assert recorded == []
    release.set()
    assert (await handle.wait()).status.value == "completed"
    assert recorded == [("held", det)]
    assert store.writer_stats().operations - before == 2  # the whole run, and the flush above
    run = store.get_run("held")
    assert run is not None
    assert (run["status"], run["detection_id"], run["trigger"], run["workflow"]["workflow_id"]) == \
        ("completed", det, "detection", "wf")
    assert run["finished_at"] >= run["started_at"] and run["result"]["steps_completed"] == 1
    assert [(s["step_id"], s["status"], s["result"]) for s in run["steps"]] == \
        [("first", "completed", "scanned"), ("never", "skipped", None)]
    stats = store.run_stats("wf")[0]
    assert (stats["runs"], stats["completed"], stats["last_run"]["run_id"]) == (1, 1, "held")


async def test_a_held_run_is_on_disk_before_a_non_idempotent_step_acts(store: Store, db_path: Path) -> None:
    recorded: list[str] = []
    recorder = HistoryRecorder(store, on_run_recorded=lambda rid, did: recorded.append(rid))
    engine, _, release, _ = _blocking_engine(recorder)
    release.set()
    on_disk: list[Any] = []

    async def unsafe(*, context: dict[str, Any], **params: Any) -> str:
        from sdd.engine import current_step
        rid = current_step().run_id
        on_disk.append((_peek_run(db_path, rid), _peek_step(db_path, rid, "first"), _peek_step(db_path, rid, "hook"),
                        list(recorded)))
        return "posted"

    engine.register_action("unsafe", unsafe, idempotent=False)
    det = await store.add_detection({"type": "malware"})
    wf = Workflow.from_dict({"workflow_id": "wf", "name": "mixed", "steps": [
        {"step_id": "first", "type": "action", "action": "safe"},
        {"step_id": "hook", "type": "action", "action": "unsafe"}]})
    labels = run_labels(detection_id=det, external_id=None, trigger=Trigger.DETECTION)
    assert (await engine.execute_workflow(wf, run_id="mixed", detection={"type": "malware"},
                                          labels=labels)).status.value == "completed"
    # The run's row, the idempotent step before it and the intent were committed before the side effect.
    assert on_disk == [("running", ("completed", 1), ("running", 1), ["mixed"])]
    assert recorded == ["mixed"]
    assert store.get_run("mixed")["status"] == "completed"  # type: ignore[index]
    assert [s["status"] for s in store.steps_of("mixed")] == ["completed", "completed"]
    assert store.run_stats("wf")[0]["completed"] == 1


async def test_a_long_held_run_shows_as_running_after_the_delay(store: Store, db_path: Path) -> None:
    recorded: list[str] = []
    recorder = HistoryRecorder(store, on_run_recorded=lambda rid, did: recorded.append(rid))
    engine, entered, release, _ = _blocking_engine(recorder)
    wf = Workflow.from_dict({"workflow_id": "wf", "name": "long", "steps": [
        {"step_id": "quick", "type": "action", "action": "notify_ok"},
        {"step_id": "slow", "type": "action", "action": "safe"}]})

    async def notify_ok(*, context: dict[str, Any], **params: Any) -> str:
        return "ok"

    engine.register_action("notify_ok", notify_ok, idempotent=True)
    handle = engine.start(wf, run_id="long", detection={"type": "malware", "id": "ext-long"})
    await entered.wait()
    recorder._flush(0.0)  # what the timer does for a run still going after the delay
    await store.flush()
    assert _peek_run(db_path, "long") == "running" and recorded == ["long"]
    assert _peek_step(db_path, "long", "quick") == ("completed", 1)
    assert _peek_step(db_path, "long", "slow") == ("running", 1)
    release.set()
    assert (await handle.wait()).status.value == "completed"
    assert recorded == ["long"]  # announced once
    assert [(s["step_id"], s["status"]) for s in store.steps_of("long")] == [("quick", "completed"),
                                                                             ("slow", "completed")]
    assert store.run_stats("wf")[0]["runs"] == 1


async def test_api_and_resumed_runs_are_written_at_once(store: Store, db_path: Path) -> None:
    recorder = HistoryRecorder(store)
    engine, entered, release, _ = _blocking_engine(recorder)
    wf = Workflow.from_dict({"workflow_id": "wf", "name": "api", "steps": [
        {"step_id": "slow", "type": "action", "action": "safe"}]})
    handle = engine.start(wf, run_id="by-api",
                          labels=run_labels(detection_id=None, external_id=None, trigger=Trigger.API, uid=1000))
    await entered.wait()
    await store.flush()
    assert _peek_run(db_path, "by-api") == "running"  # `sddctl run start` then `run show` finds it
    release.set()
    assert (await handle.wait()).status.value == "completed"


async def test_a_held_run_whose_store_closed_is_logged_not_raised(db_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The flush timer has no caller to catch for it: a store gone under a held run is logged, and the run
    itself goes on (all its steps are idempotent)."""
    store = Store.open(db_path)
    recorder = HistoryRecorder(store)
    engine, entered, release, _ = _blocking_engine(recorder)
    wf = Workflow.from_dict({"workflow_id": "wf", "name": "gone", "steps": [
        {"step_id": "slow", "type": "action", "action": "safe"}]})
    handle = engine.start(wf, run_id="gone", detection={"type": "malware", "id": "ext-gone"})
    await entered.wait()
    store.close()
    recorder._flush(0.0)  # what the timer does: must not raise
    assert "cannot record run gone" in caplog.text
    release.set()
    assert (await handle.wait()).status.value == "completed"


async def test_a_step_reported_waiting_is_on_disk_waiting_with_its_reason_then_running_again(
        store: Store, db_path: Path) -> None:
    """Issue 13: a guard's wait (report_waiting) is committed before the handler goes on, even for a run of
    idempotent steps that the recorder would otherwise hold in memory until it ends; a restart finds it."""
    from sdd.engine import current_step, report_waiting

    seen: list[Any] = []
    engine = WorkflowEngine(listeners=[HistoryRecorder(store)])

    async def guarded(*, context: dict[str, Any], **params: Any) -> str:
        run_id = current_step().run_id
        await report_waiting("rate limit for guarded reached", 1234.5)
        seen.append(_peek_step(db_path, run_id, "g"))
        seen.append(store.list_runs(limit=5).items[0]["waiting"])
        await report_waiting(None, 1234.5)
        seen.append(_peek_step(db_path, run_id, "g"))
        return "done"

    engine.register_action("guarded", guarded, idempotent=True)
    await store.add_detection({"type": "malware", "id": "ext-w"})
    wf = Workflow.from_dict({"workflow_id": "wf", "steps": [{"step_id": "g", "action": "guarded"}]})
    handle = engine.start(wf, detection={"type": "malware", "id": "ext-w"})
    assert (await handle.wait()).status.value == "completed"
    assert seen[0] == ("waiting", 1)
    assert seen[1] == {"step_id": "g", "action": "guarded", "reason": "rate limit for guarded reached",
                       "since": 1234.5}
    assert seen[2] == ("running", 1)
    assert _peek_step(db_path, handle.run_id, "g") == ("completed", 1)
    dry = await engine.execute_workflow(wf, dry_run=True)  # a dry run never acts, so never waits
    assert dry.status.value == "completed"
