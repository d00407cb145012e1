"""What was reported committed survives a real `kill -9` of the process that was writing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
