"""Crash semantics on a database left exactly as a kill -9 at a chosen instant would leave it: a run
`running`, its steps recorded up to an intent with no outcome. The restarted daemon resumes it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from sdd.engine import load_workflow
from sdd.store import Store
from tests.support.daemon import DaemonProcess
from tests.support.workflows import APPEND_SCRIPT


def workflow(log_path: Path, on_interrupt: str | None = None) -> str:
    extra = f"on_interrupt: {on_interrupt}\n" if on_interrupt else ""
    return f"""workflow_id: resume
{extra}trigger: {{type: malware}}
steps:
  - step_id: s0
    action: send_notification
    params: {{message: "s0", channel: log}}
  - step_id: s1
    action: send_notification
    params: {{message: "s1", channel: log}}
  - step_id: append
    action: run_script
    params: {{script: append.sh, args: ["{log_path}"]}}
"""


def crashed_run(d: DaemonProcess, done: list[str], in_flight: str) -> str:
    """Writes the history of a run that was killed while `in_flight` was acting."""
    wf = load_workflow(d.workflows_dir / "resume.yaml")
    run_id = "c0ffee" * 5 + "00"
    steps = {s.step_id: s for s in wf.steps}

    async def write() -> None:
        store = Store.open(d.database)
        detection = await store.record_detection({"type": "malware", "file_path": "/tmp/crash"})
        await store.set_detection_state(detection.detection_id, "matched", "resume")
        now = time.time()
        await store.create_run(run_id, "resume", detection.detection_id, {}, wf.to_dict(), "running", "detection",
                               started_at=now)
        for step_id in [*done, in_flight]:
            action = steps[step_id].action
            await store.record_step_started(run_id, step_id, step_type="action", action=action, attempt=1,
                                            idempotent=action != "run_script", started_at=now, params={})
            if step_id != in_flight:
                await store.record_step_finished(run_id, step_id, "completed", attempts=1, started_at=now,
                                                 finished_at=now, result={"sent": True})
        store.close()

    asyncio.run(write())
    return run_id


def run_status(d: DaemonProcess, run_id: str) -> str:
    rows = d.query("SELECT status FROM runs WHERE run_id = ?", (run_id,))
    return rows[0][0] if rows else ""


def step_row(d: DaemonProcess, run_id: str, step_id: str) -> tuple[str, int]:
    row = d.query("SELECT status, attempts FROM steps WHERE run_id = ? AND step_id = ? AND phase = 'run'",
                  (run_id, step_id))[0]
    return row[0], row[1]


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    def make(on_interrupt: str | None = None) -> tuple[DaemonProcess, Path]:
        log_path = tmp_path / "effects.log"
        d = DaemonProcess(tmp_path, workflows={"resume": workflow(log_path, on_interrupt)},
                          scripts={"append.sh": APPEND_SCRIPT})
        return d, log_path
    return make


def test_an_idempotent_step_in_flight_is_run_again_and_the_run_completes(setup) -> None:  # type: ignore[no-untyped-def]
    d, log_path = setup()
    run_id = crashed_run(d, done=["s0"], in_flight="s1")
    with d:
        d.wait_for(lambda: run_status(d, run_id) == "completed", what="the resumed run")
        assert step_row(d, run_id, "s1")[0] == "completed"
        assert log_path.read_text().split() == [f"{run_id}:append"]
        assert d.count("SELECT count(*) FROM runs") == 1  # resumed, not started again


def test_a_non_idempotent_step_in_flight_is_not_repeated(setup) -> None:  # type: ignore[no-untyped-def]
    d, log_path = setup()
    run_id = crashed_run(d, done=["s0", "s1"], in_flight="append")
    with d:
        d.wait_for(lambda: run_status(d, run_id) == "interrupted", what="the interrupted run")
        assert step_row(d, run_id, "append")[0] == "interrupted"
        assert not log_path.exists()


def test_on_interrupt_retry_runs_it_again(setup) -> None:  # type: ignore[no-untyped-def]
    d, log_path = setup("retry")
    run_id = crashed_run(d, done=["s0", "s1"], in_flight="append")
    with d:
        d.wait_for(lambda: run_status(d, run_id) == "completed", what="the retried run")
        assert log_path.read_text().split() == [f"{run_id}:append"]
