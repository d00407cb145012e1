"""restore_detection on a real store and vault: what an undo request may restore, and what it must keep —
the cases a running daemon rarely lines up (a run still going, an undo of an undo, a replay of the original,
another run's item), with a positive control. The daemon path is tests/ingest/test_templates_e2e.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sdd.actions.undo import plan_undo
from sdd.engine import ActionError, Forbidden, NotFound
from sdd.store import Store

from .conftest import Env


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store.open(tmp_path / "sdd.db")
    try:
        yield s
    finally:
        await s.aclose()


async def quarantined_by(env: Env, store: Store, detection: dict[str, Any], run_id: str, name: str,
                         status: str = "completed") -> tuple[str, str]:
    """A detection, a run of it, and a file that run quarantined: (sdd's detection id, quarantine id)."""
    det = await store.add_detection(detection)
    await store.create_run(run_id, "wazuh_fim", det)
    path = env.root / name
    path.write_bytes(name.encode())
    env.configure(store=store)
    q = await env.call("quarantine_file", file_path=str(path))
    await store.put_quarantine({"id": q["quarantine_id"], "sha256": q["sha256"], "original_path": str(path),
                                "run_id": run_id, "detection_id": detection.get("id")})
    if status != "running":
        await store.finish_run(run_id, status)
    await store.flush()
    return det, q["quarantine_id"]


WAZUH = {"type": "wazuh", "source": "wazuh"}
UNDO = {"type": "undo", "source": "wazuh"}


async def test_only_the_detections_own_items_while_nothing_else_names_them(env: Env, store: Store) -> None:
    await quarantined_by(env, store, {**WAZUH, "id": "w:1", "file_path": str(env.root / "mine")}, "r1", "mine")
    _, theirs = await quarantined_by(env, store, {**WAZUH, "id": "w:2", "file_path": str(env.root / "theirs")},
                                     "r2", "theirs")
    # A replay of w:1 is recorded as its duplicate: the same alert, not another voice.
    await store.add_detection({**WAZUH, "id": "w:1", "file_path": str(env.root / "mine")})
    await store.flush()
    plan = plan_undo(store, "w:1", UNDO)
    assert [i["original_path"] for i in plan.restore] == [str(env.root / "mine")]
    assert theirs not in {i["quarantine_id"] for i in plan.restore} and plan.keep == []
    # Now another producer names the same file: it stays.
    await store.add_detection({"type": "malware", "source": "clamav", "file_path": str(env.root / "mine")})
    await store.flush()
    plan = plan_undo(store, "w:1", UNDO)
    assert plan.restore == [] and "source clamav) also named this file" in plan.keep[0]["reason"]


async def test_an_undo_waits_for_the_detections_runs_to_end(env: Env, store: Store) -> None:
    await quarantined_by(env, store, {**WAZUH, "id": "w:1"}, "r1", "f", status="running")
    with pytest.raises(ActionError, match="r1 have not ended") as e:
        plan_undo(store, "w:1", UNDO)
    assert e.value.retryable
    await store.finish_run("r1", "completed")
    await store.flush()
    assert len(plan_undo(store, "w:1", UNDO).restore) == 1


async def test_what_an_undo_refuses(env: Env, store: Store) -> None:
    await quarantined_by(env, store, {**WAZUH, "id": "w:1"}, "r1", "f")
    await store.add_detection({**UNDO, "id": "w:1:undo", "undo_of": "w:1"})
    await store.flush()
    with pytest.raises(NotFound, match="no detection with id 'nope'"):
        plan_undo(store, "nope", UNDO)
    with pytest.raises(Forbidden, match="is itself an undo request"):
        plan_undo(store, "w:1:undo", UNDO)
    with pytest.raises(Forbidden, match="from source 'falco', detection 'w:1' from 'wazuh'"):
        plan_undo(store, "w:1", {"type": "undo", "source": "falco"})
    with pytest.raises(Forbidden, match="from source None"):
        plan_undo(store, "w:1", {"type": "undo"})
    assert len(plan_undo(store, "w:1", UNDO).restore) == 1   # the positive control


async def test_the_action_restores_and_a_second_run_finds_it_done(env: Env, store: Store) -> None:
    _, qid = await quarantined_by(env, store, {**WAZUH, "id": "w:1"}, "r1", "f")
    env.configure(store=store)
    res = await env.step("restore_detection", {"undo_of": "w:1"}, detection={**UNDO, "undo_of": "w:1"})
    result = res.step_results["s"].result
    assert res.status.value == "completed", res.error
    assert [r["quarantine_id"] for r in result["restored"]] == [qid] and (env.root / "f").read_bytes() == b"f"
    await store.flush()
    again = (await env.step("restore_detection", {}, detection={**UNDO, "undo_of": "w:1"})).step_results["s"]
    assert again.result["restored"] == [] and [a["quarantine_id"] for a in again.result["already_restored"]] == [qid]
    env.configure(store=None)
    no_store = (await env.step("restore_detection", {}, detection={**UNDO, "undo_of": "w:1"})).step_results["s"]
    assert no_store.status.value == "failed" and "needs the history database" in (no_store.error or "")
