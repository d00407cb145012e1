"""What was reported committed survives a real `kill -9` of the process that was writing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sdd.store import Store

CHILD = Path(__file__).with_name("crash_child.py")


def test_committed_writes_survive_sigkill(db_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    child = subprocess.Popen([sys.executable, str(CHILD), str(db_path)], stdout=subprocess.PIPE, text=True,
                             env=env)
    lines: list[str] = []
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 60
        while len(lines) < 400:
            line = child.stdout.readline()
            assert line, "child exited early"
            assert time.monotonic() < deadline
            if line.strip() != "ready":
                lines.append(line.strip())
        os.kill(child.pid, signal.SIGKILL)
        # Lines already in the pipe were printed after their commit too: they count.
        lines.extend(x.strip() for x in child.stdout.read().splitlines() if x.strip())
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(30)
    assert child.returncode == -signal.SIGKILL

    detections = {x.split()[1] for x in lines if x.startswith("detection ")}
    intents = {x.split()[1] for x in lines if x.startswith("intent ")}
    assert len(detections) >= 100
    store = Store.open(db_path)
    try:
        conn = store._read()
        stored = {r[0] for r in conn.execute("SELECT spool_name FROM detections")}
        assert detections <= stored
        for run_id in intents:
            steps = store.steps_of(run_id)
            assert [(s["step_id"], s["status"]) for s in steps] == [("script", "running")]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        store.close()


def test_engine_killed_mid_action_resumes_without_repeating_it(db_path: Path, tmp_path: Path) -> None:
    """kill -9 while a non-idempotent action runs: its intent is on disk, and resuming the run from the
    recorded steps marks it interrupted instead of running the side effect a second time."""
    from .engine_child import WORKFLOW

    log = tmp_path / "effects.log"
    _kill_engine_child_while_acting(db_path, log)
    assert log.read_text() == "side effect\n"

    status, calls, prior = _resume(db_path, WORKFLOW, {"safe": True, "unsafe": False})
    assert prior["first"].status == "completed" and prior["hook"].status == "running"
    assert status == "interrupted" and calls == []
    assert log.read_text() == "side effect\n"
    store = Store.open(db_path)
    try:
        run = store.get_run("the-run")
        assert run is not None and run["status"] == "interrupted" and run["resumed"] == 1
        assert {s["step_id"]: s["status"] for s in run["steps"]} == {"first": "completed", "hook": "interrupted"}
    finally:
        store.close()


def test_engine_killed_mid_idempotent_step_runs_it_again_on_resume(db_path: Path, tmp_path: Path) -> None:
    """kill -9 while an idempotent step runs: its intent need not be on disk (a quick one is written as one
    row with its outcome); resuming re-runs it — the crash semantics for idempotent steps — and reuses the
    steps before it. The step ends with exactly one row."""
    from .engine_child import IDEMPOTENT_WORKFLOW

    _kill_engine_child_while_acting(db_path, tmp_path / "unused.log", "idempotent")

    status, calls, prior = _resume(db_path, IDEMPOTENT_WORKFLOW, {"safe": True, "slow": True})
    assert prior["first"].status == "completed"
    # No row (held in memory when killed) or a `running` one (the delayed intent had been written).
    assert "slow" not in prior or prior["slow"].status == "running"
    assert status == "completed" and calls == ["called"]  # `first` reused, `slow` run again
    store = Store.open(db_path)
    try:
        run = store.get_run("the-run")
        assert run is not None and run["status"] == "completed" and run["resumed"] == 1
        assert [(s["step_id"], s["status"]) for s in run["steps"]] == [("first", "completed"), ("slow", "completed")]
        assert run["steps"][1]["params"] == {"n": 1} and run["steps"][1]["result"] == "again"
    finally:
        store.close()


def _resume(db_path: Path, workflow: dict[str, Any], actions: dict[str, bool]) -> tuple[str, list[str], Any]:
    """What the daemon does at start-up with the run the kill left `running`: resume it from its recorded
    steps with actions (name → idempotent) that count their calls. (status, calls, the recorded steps)."""
    import asyncio

    from sdd.engine import Workflow, WorkflowEngine
    from sdd.history.recorder import HistoryRecorder

    async def restart() -> tuple[str, list[str], Any]:
        store = Store.open(db_path)
        try:
            assert [r["run_id"] for r in store.runs_in_status("running")] == ["the-run"]
            recorder = HistoryRecorder(store)
            prior = recorder.prior_steps("the-run")
            calls: list[str] = []

            async def act(*, context: dict[str, object], **params: object) -> str:
                calls.append("called")
                return "again"

            engine = WorkflowEngine(listeners=[recorder])
            for name, idempotent in actions.items():
                engine.register_action(name, act, idempotent=idempotent)
            result = await engine.execute_workflow(Workflow.from_dict(workflow), run_id="the-run", prior=prior)
            return result.status.value, calls, prior
        finally:
            store.close()

    return asyncio.run(restart())


def _kill_engine_child_while_acting(db_path: Path, log: Path, *mode: str) -> None:
    """Runs tests/store/engine_child.py and SIGKILLs it once it says its action is under way."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root))
    child = subprocess.Popen([sys.executable, "-m", "tests.store.engine_child", str(db_path), str(log), *mode],
                             stdout=subprocess.PIPE, text=True, env=env, cwd=root)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "acting"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(30)
