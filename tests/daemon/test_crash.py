"""kill -9 in the middle of a burst, then restart: every detection is accounted for and no
non-idempotent step (a script appending its idempotency key to a log) ever runs twice."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.support.daemon import DaemonProcess
from tests.support.workflows import APPEND_SCRIPT, notify_workflow, script_workflow

N = 300


def test_kill9_mid_burst_then_restart_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    log_path = tmp_path / "side-effects.log"
    d = DaemonProcess(tmp_path, workflows={"scripted": script_workflow(log_path)},
                      scripts={"append.sh": APPEND_SCRIPT},
                      config_overrides={"logging": {"level": "warning"}, "engine": {"max_concurrent_runs": 8}})
    try:
        d.start()
        names = [d.drop({"type": "malware", "file_path": f"/tmp/k{i}", "threat_name": f"T{i}"}) for i in range(N)]
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'completed'") >= 20,
                   what="some runs done before the crash")
        d.kill()
        before = d.count("SELECT count(*) FROM runs WHERE status = 'completed'")
        assert before < N, "the burst finished before the kill; the test proves nothing"

        d.start()
        d.wait_for(lambda: d.count("SELECT count(*) FROM detections WHERE state != 'queued'") == N
                   and d.count("SELECT count(*) FROM runs WHERE status IN ('running', 'pending')") == 0
                   and not d.spool_files("new") and not d.spool_files("cur"),
                   timeout=120, what="every detection accounted for")
        assert d.count("SELECT count(*) FROM detections") == N
        assert d.count("SELECT count(DISTINCT spool_name) FROM detections") == len(set(names))
        assert d.count("SELECT count(*) FROM detections WHERE state != 'matched'") == 0
        # One run per detection: none started twice by the recovery.
        assert d.count("SELECT count(*) FROM runs") == N
        assert d.count("SELECT count(DISTINCT detection_id) FROM runs") == N
        statuses = dict(d.query("SELECT status, count(*) FROM runs GROUP BY status"))
        print("statuses", statuses, "completed before the kill", before)
        assert set(statuses) <= {"completed", "interrupted"}, statuses
        # The script's side effect happened at most once per run, and exactly once for completed runs.
        lines = log_path.read_text().split() if log_path.exists() else []
        counts = Counter(lines)
        assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n > 1]
        completed = {r[0] for r in d.query("SELECT run_id FROM runs WHERE status = 'completed'")}
        assert {f"{rid}:append" for rid in completed} <= set(counts)
        interrupted = {r[0] for r in d.query("SELECT run_id FROM runs WHERE status = 'interrupted'")}
        for rid in interrupted:  # outcome unknown: its script step is marked, never re-run
            rows = d.query("SELECT status FROM steps WHERE run_id = ? AND step_id = 'append'", (rid,))
            assert [r[0] for r in rows] == ["interrupted"]
    finally:
        d.close()


def test_kill9_while_runs_are_held_in_memory_redoes_each_of_them_once(tmp_path: Path) -> None:
    """Runs of idempotent steps are written whole when they finish; the ones a kill -9 catches in flight
    leave no row and their detections `queued`, so the restart runs each of them again exactly once."""
    d = DaemonProcess(tmp_path, workflows={"long": notify_workflow("long", steps=40)},
                      config_overrides={"logging": {"level": "warning"}, "engine": {"max_concurrent_runs": 8}})
    try:
        d.start()
        for i in range(N):
            d.drop({"type": "malware", "file_path": f"/tmp/h{i}", "threat_name": f"T{i}"})
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs") >= 20, what="some runs done before the crash")
        d.kill()
        before = d.count("SELECT count(*) FROM runs")
        assert before < N, "the burst finished before the kill; the test proves nothing"
        # A finished run is on disk whole: its row and all its steps, from one commit.
        done = d.count("SELECT count(*) FROM runs WHERE status = 'completed'")
        assert d.count("SELECT count(*) FROM steps JOIN runs USING (run_id) WHERE runs.status = 'completed'") == \
            40 * done

        d.start()
        d.wait_for(lambda: d.count("SELECT count(*) FROM detections WHERE state != 'queued'") == N
                   and d.count("SELECT count(*) FROM runs") == N and not d.spool_files("new")
                   and not d.spool_files("cur"), timeout=120, what="every detection accounted for")
        assert d.count("SELECT count(*) FROM detections") == N
        assert d.count("SELECT count(*) FROM detections WHERE state != 'matched'") == 0
        assert d.count("SELECT count(DISTINCT detection_id) FROM runs") == N
        assert d.count("SELECT count(*) FROM runs WHERE status = 'completed'") == N
        assert d.count("SELECT count(*) FROM steps WHERE status = 'completed'") == 40 * N
    finally:
        d.close()
