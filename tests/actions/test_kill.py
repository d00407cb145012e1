"""kill_process on real child processes: TERM then KILL, trees, pid reuse, refusals."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from sdd.actions import RateLimited
from sdd.config import RateLimit
from sdd.engine import Conflict, Forbidden, InvalidParams, RunStatus

from .conftest import Env

READY = "import sys; sys.stdout.write('ready\\n'); sys.stdout.flush(); "


@pytest.fixture
def spawn() -> Iterator:
    procs: list[subprocess.Popen] = []

    def start(code: str = "import time; time.sleep(120)", ignore_term: bool = False) -> subprocess.Popen:
        prefix = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " if ignore_term else ""
        p = subprocess.Popen([sys.executable, "-c", prefix + READY + code], stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdout.readline() == "ready\n"  # handlers installed
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        if p.stdout is not None:
            p.stdout.close()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_kills_a_process_with_term(env: Env, spawn) -> None:
    p = spawn()
    res = await env.call("kill_process", process_id=p.pid)
    assert res["terminated"] == [p.pid] and res["killed"] == []
    assert p.wait(timeout=10) == -15


async def test_term_ignored_escalates_to_kill(env: Env, spawn) -> None:
    p = spawn(ignore_term=True)
    res = await env.call("kill_process", process_id=str(p.pid), timeout=0.2)
    assert res["killed"] == [p.pid]
    assert p.wait(timeout=10) == -9


async def test_include_children_kills_the_tree(env: Env, spawn) -> None:
    code = ("import subprocess, sys, time; "
            "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']) for _ in range(2)]; "
            "print(' '.join(str(k.pid) for k in kids), flush=True); time.sleep(120)")
    p = spawn(code)
    assert p.stdout is not None
    kids = [int(x) for x in p.stdout.readline().split()]
    res = await env.call("kill_process", process_id=p.pid, include_children=True)
    assert sorted(res["terminated"]) == sorted([p.pid, *kids])
    p.wait(timeout=10)
    deadline = time.monotonic() + 10
    while not all(gone(k) for k in kids) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # orphans are reaped by init; poll with a deadline
    assert all(gone(k) for k in kids)


async def test_already_gone_counts_as_done(env: Env, spawn) -> None:
    p = spawn()
    started = psutil.Process(p.pid).create_time()
    p.kill()
    p.wait()
    res = await env.call("kill_process", process_id=p.pid, process_start_time=started)
    assert res["already_gone"] is True


async def test_reused_pid_is_refused_and_process_survives(env: Env, spawn) -> None:
    p = spawn()
    real = psutil.Process(p.pid).create_time()
    with pytest.raises(Conflict, match="reused"):
        await env.call("kill_process", process_id=p.pid, process_start_time=real - 30)
    assert p.poll() is None


async def test_detection_start_time_is_used(env: Env, spawn) -> None:
    p = spawn()
    real = psutil.Process(p.pid).create_time()
    result = await env.step("kill_process", {"process_id": p.pid},
                            detection={"process_id": p.pid, "process_start_time": real - 30})
    assert result.status is RunStatus.FAILED and "reused" in (result.error or "")
    assert p.poll() is None
    result = await env.step("kill_process", {"process_id": "{{ detection.process_id }}"},
                            detection={"process_id": p.pid, "process_start_time": real})
    assert result.status is RunStatus.COMPLETED
    assert p.wait(timeout=10) == -15


async def test_start_time_from_first_look_is_kept_across_attempts(env: Env, spawn) -> None:
    p = spawn()
    # A step that first saw this pid at another start time (its process died, the pid was reused).
    env.services.first_seen("run:step", p.pid, psutil.Process(p.pid).create_time() - 30)
    from sdd.engine.registry import _current_step
    token = _current_step.set(("run", "wf", "step", 2, "run:step", {}, False, "run", None))
    try:
        with pytest.raises(Conflict):
            await env.call("kill_process", process_id=p.pid)
    finally:
        _current_step.reset(token)
    assert p.poll() is None


@pytest.mark.parametrize("pid, message", [
    (1, "pid 1"), (os.getpid(), "daemon"), (os.getppid(), "ancestors"), (2, "kernel thread")])
async def test_refuses_protected_pids(env: Env, pid: int, message: str) -> None:
    if pid == 2 and not os.path.exists("/proc/2"):
        pytest.skip("no kthreadd visible in this pid namespace")
    with pytest.raises(Forbidden, match=message):
        await env.call("kill_process", process_id=pid)


async def test_refuses_protected_names(env: Env, spawn) -> None:
    env.configure(protected_processes=(os.path.basename(sys.executable), "python3"))
    p = spawn()
    with pytest.raises(Forbidden, match="protected process"):
        await env.call("kill_process", process_id=p.pid)
    assert p.poll() is None


@pytest.mark.parametrize("value", ["abc", "12; rm -rf /", True, -5, 0, 1.5, [1], None, "1e3"])
async def test_refuses_non_numeric_pids(env: Env, value: object) -> None:
    params = {} if value is None else {"process_id": value}
    with pytest.raises(InvalidParams, match="process_id"):
        await env.call("kill_process", **params)


async def test_kill_rate_limit(env: Env, spawn) -> None:
    env.configure(rate_limits={"kill_process": RateLimit(1, 3600.0)})
    a, b = spawn(), spawn()
    await env.call("kill_process", process_id=a.pid)
    with pytest.raises(RateLimited):
        await env.call("kill_process", process_id=b.pid)
    assert b.poll() is None


def _respawn_at(pid: int, attempts: int = 50) -> subprocess.Popen | None:
    """A new process with exactly `pid`, by setting the kernel's last-allocated pid (as CRIU does)."""
    for _ in range(attempts):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
                fh.write(str(pid - 1))
        except OSError:
            return None
        p = subprocess.Popen([sys.executable, "-c", READY + "import time; time.sleep(120)"],
                             stdout=subprocess.PIPE, text=True)
        if p.pid == pid:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
            return p
        p.kill()  # another process on the machine took the pid first: try again
        p.wait()
        assert p.stdout is not None
        p.stdout.close()
    return None


async def test_genuinely_reused_pid_is_refused(env: Env, spawn) -> None:
    old = spawn()
    detection = {"process_id": old.pid, "process_start_time": psutil.Process(old.pid).create_time()}
    old.kill()
    old.wait()
    new = _respawn_at(detection["process_id"])
    if new is None:
        pytest.skip("cannot steer pid allocation here (/proc/sys/kernel/ns_last_pid needs root)")
    try:
        assert new.pid == old.pid
        if abs(psutil.Process(new.pid).create_time() - detection["process_start_time"]) < 0.01:
            pytest.skip("the new process started in the same clock tick: indistinguishable by design")
        result = await env.step("kill_process", {"process_id": "{{ detection.process_id }}"}, detection=detection)
        assert result.status is RunStatus.FAILED and "reused" in (result.error or "")
        assert new.poll() is None  # the innocent process now holding the pid lives on
    finally:
        new.kill()
        new.wait()
        assert new.stdout is not None
        new.stdout.close()
