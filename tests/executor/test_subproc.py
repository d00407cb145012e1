"""`run_argv` (sdd/executor/subproc.py) on real processes: a cancellation, even one that lands while the
program is still starting, kills its whole process group and returns promptly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psutil
import pytest

from sdd.executor.errors import NotFound
from sdd.executor.subproc import run_argv

from ..actions.procs import gone, wait_until


def _child_pid(pidfile: Path) -> int:
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "", "the script's child's pid", 10)
    return int(pidfile.read_text())


HANG = "sleep 300 & echo $! > {pidfile}; wait"


async def test_a_cancel_while_the_program_starts_kills_its_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    task = asyncio.ensure_future(run_argv(["/bin/sh", "-c", HANG.format(pidfile=pidfile)], timeout=300))
    me = psutil.Process()
    for _ in range(100):  # step the loop until the program is forked; its pipes are connected a step later
        await asyncio.sleep(0)
        if me.children():
            break
    assert me.children(), "the program was forked"
    # Block the loop on purpose until the program's child runs: the task is still inside its start.
    child = _child_pid(pidfile)
    task.cancel()
    # Before the fix, asyncio's clean-up killed only the shell, then waited for the pipes the sleep holds.
    done, _ = await asyncio.wait([task], timeout=20)
    assert done, "the cancelled run returned"
    with pytest.raises(asyncio.CancelledError):
        task.result()
    wait_until(lambda: gone(child), "the program's child to die", 10)


async def test_a_cancel_while_the_program_runs_kills_its_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    task = asyncio.ensure_future(run_argv(["/bin/sh", "-c", HANG.format(pidfile=pidfile)], timeout=300))
    child = await asyncio.to_thread(_child_pid, pidfile)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=20)
    assert done and task.cancelled()
    wait_until(lambda: gone(child), "the program's child to die", 10)


async def test_a_program_that_is_not_there_is_not_found_and_one_that_runs_completes(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="not found"):
        await run_argv([str(tmp_path / "absent")], timeout=5)
    done = await run_argv(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], timeout=30)
    assert (done.returncode, done.stdout_head, done.stderr_tail) == (3, b"out\n", "err\n")
