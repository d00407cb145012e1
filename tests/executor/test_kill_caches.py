"""What kill_process keeps between requests, and that keeping it changes no answer: the never-signalled set is
read again once an ancestor of sdd has gone (its children reparented), and one /proc walk shared by
concurrent requests gives each exactly the holders of its own file."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from sdd.executor import InProcessExecutor, Kill, Policy
from sdd.executor.errors import Forbidden
from sdd.executor.kill import _HolderScans, _never
from sdd.executor.procfs import FileIdentity, parent

from ..actions.procs import Procs, holder_code, wait_until

SLEEPER = "import time; time.sleep(300)"
# B starts C and says both pids; A starts B and passes the line on: a chain A -> B -> C.
CHAIN_B = (f"import os, subprocess, sys, time\nc = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}])\n"
           "print(os.getpid(), c.pid, flush=True)\ntime.sleep(300)\n")
CHAIN_A = ("import subprocess, sys, time\n"
           f"b = subprocess.Popen([sys.executable, '-c', {CHAIN_B!r}], stdout=subprocess.PIPE, text=True)\n"
           "print(b.stdout.readline().strip(), flush=True)\ntime.sleep(300)\n")


def _signal(pid: int, sig: int) -> None:
    """Signal a test's own grandchild through a pidfd (a pid the test saw alive a moment ago)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


async def test_an_ancestor_that_stops_being_one_is_no_longer_refused(tmp_path: Path, procs: Procs) -> None:
    a = procs.run([sys.executable, "-c", CHAIN_A])
    assert a.stdout is not None
    b_pid, c_pid = (int(x) for x in a.stdout.readline().split())
    try:
        policy = Policy.build([tmp_path], tmp_path / "vault", sdd_pids={c_pid})
        executor = InProcessExecutor(policy)
        a_started = psutil.Process(a.pid).create_time()
        kill_a = Kill(pid=a.pid, trust=True, start_time=a_started, grace=5.0)
        with pytest.raises(Forbidden, match=f"pid {a.pid} is an ancestor of sdd"):
            await executor.call(kill_a)
        cached = _never(policy)
        assert {a.pid, b_pid, c_pid} <= cached.pids and cached.current()
        assert _never(policy) is cached  # nothing changed: no /proc read
        _signal(b_pid, signal.SIGKILL)  # C is reparented: A is no longer an ancestor of "sdd"
        wait_until(lambda: parent(c_pid) not in (b_pid, None), f"pid {c_pid} to be reparented")
        assert not cached.current()
        fresh = _never(policy)
        assert fresh is not cached and a.pid not in fresh.pids and c_pid in fresh.pids
        out = (await executor.call(kill_a)).value
        assert out["terminated"] == [a.pid]
        assert a.wait(timeout=10) == -signal.SIGTERM
    finally:
        _signal(c_pid, signal.SIGKILL)
        _signal(b_pid, signal.SIGKILL)


def _ident(path: Path) -> FileIdentity:
    st = os.stat(path)
    return FileIdentity(st.st_dev, st.st_ino, str(path), "file")


async def test_concurrent_holder_scans_share_one_walk_and_each_gets_its_own_holders(
        tmp_path: Path, procs: Procs) -> None:
    one, two, three = tmp_path / "one", tmp_path / "two", tmp_path / "three"
    for f in (one, two, three):
        f.write_bytes(b"x" * 4096)
    h1 = procs.python(holder_code(one))
    h2 = procs.python(holder_code(two, "mapped"))
    scans = _HolderScans()
    found = await asyncio.gather(scans.holders(_ident(one)), scans.holders(_ident(two)),
                                 scans.holders(_ident(three)))
    assert found == [{h1.pid: ["open"]}, {h2.pid: ["mapped"]}, {}]
    assert scans.walks == 1

    # A request made while a walk runs is answered by the next walk, which sees what is there by then.
    first = asyncio.ensure_future(scans.holders(_ident(one)))
    while scans.walks == 1:
        await asyncio.sleep(0)  # until the walker has started its walk (it then awaits its thread)
    h3 = procs.python(holder_code(three))
    assert await scans.holders(_ident(three)) == {h3.pid: ["open"]}
    assert await first == {h1.pid: ["open"]}
    assert scans.walks == 3


async def test_two_concurrent_kills_by_file_each_stop_exactly_their_holders(tmp_path: Path, procs: Procs) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for f in (one, two):
        f.write_bytes(b"x" * 4096)
    of_one = [procs.python(holder_code(one)), procs.python(holder_code(one, "mapped"))]
    of_two = [procs.python(holder_code(two))]
    executor = InProcessExecutor(Policy.build([tmp_path], tmp_path / "vault"))
    r1, r2 = await asyncio.gather(executor.call(Kill(file_path=str(one), grace=5.0)),
                                  executor.call(Kill(file_path=str(two), grace=5.0)))
    assert sorted(r1.value["terminated"]) == sorted(p.pid for p in of_one)
    assert r2.value["terminated"] == [of_two[0].pid]
    for p in of_one + of_two:
        assert p.wait(timeout=10) == -signal.SIGTERM

