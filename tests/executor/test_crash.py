"""The boundary under a crash: kill -9 of the executor while a request is in flight.

An idempotent request (kill) fails retryably: another attempt finds it done or does it. A non-idempotent
one (run_script) fails for good with "outcome unknown": it may have run, so it is never run again by itself.
A request after the crash reconnects to the executor's next instance on the same socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sdd.executor import Kill, PrimitiveError, Quarantine, RunScript, SocketExecutor, Unavailable
from tests.support.trusted import trusted_dir

from ..actions.procs import Procs, holder_code, wait_until

SERVER = """
import asyncio, os, socket, sys
from sdd.executor import ExecutorServer, Policy
sock = socket.socket(fileno=int(sys.argv[1]))
policy = Policy.build([sys.argv[2]], sys.argv[3], scripts_dir=sys.argv[4])
async def main():
    server = ExecutorServer(policy, allowed_uid=os.geteuid())
    await server.start(sock)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


class Executors:
    """Executor processes serving one listening socket, as the supervisor runs them."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.path = base / "executor.sock"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(8)
        self.scripts = trusted_dir("scripts")
        self.procs: list[subprocess.Popen[str]] = []

    def start(self) -> subprocess.Popen[str]:
        fd = self.listener.fileno()
        p = subprocess.Popen([sys.executable, "-c", SERVER, str(fd), str(self.base / "root"),
                              str(self.base / "vault"), str(self.scripts)], pass_fds=(fd,), stdout=subprocess.PIPE,
                             text=True)
        self.procs.append(p)
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        return p

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()
        self.listener.close()


@pytest.fixture
def executors(tmp_path: Path) -> Iterator[Executors]:
    (tmp_path / "root").mkdir()
    e = Executors(tmp_path)
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture
async def client(executors: Executors) -> AsyncIterator[SocketExecutor]:
    c = SocketExecutor(str(executors.path))
    try:
        yield c
    finally:
        await c.close()


async def test_an_executor_killed_mid_kill_is_a_retryable_failure_and_the_next_call_reconnects(
        executors: Executors, client: SocketExecutor, procs: Procs) -> None:
    first = executors.start()
    exe = executors.base / "root" / "evil.bin"
    exe.write_bytes(b"held open by the victim")
    marker = executors.base / "term"
    victim = procs.python(holder_code(exe, extra=(
        f"import signal\nsignal.signal(signal.SIGTERM, lambda *a: open({str(marker)!r}, 'w').close())")))
    call = asyncio.ensure_future(client.call(Kill(pid=victim.pid, file_path=str(exe), grace=60.0)))
    await asyncio.to_thread(wait_until, marker.exists, "the SIGTERM")
    first.send_signal(signal.SIGKILL)
    with pytest.raises(Unavailable) as caught:
        await asyncio.wait_for(call, 30)
    assert caught.value.retryable and "outcome is unknown" in str(caught.value)
    executors.start()  # what the supervisor (or systemd) does
    done = await asyncio.wait_for(client.call(Kill(pid=victim.pid, file_path=str(exe), grace=0.5)), 60)
    assert done.value["killed"] == [victim.pid]  # the retry finishes it: one process, stopped once
    victim.wait(30)


async def test_an_executor_killed_mid_script_is_an_unknown_outcome_never_retried(
        executors: Executors, client: SocketExecutor) -> None:
    first = executors.start()
    marker = executors.base / "started"
    path = executors.scripts / "slow.sh"
    path.write_text(f"#!/bin/sh\necho $$ > {marker}.tmp && mv {marker}.tmp {marker}\nexec sleep 300\n")
    os.chmod(path, 0o755)
    call = asyncio.ensure_future(client.call(RunScript(str(path), timeout=120.0)))
    await asyncio.to_thread(wait_until, marker.exists, "the script to start")
    first.send_signal(signal.SIGKILL)
    with pytest.raises(PrimitiveError) as caught:
        await asyncio.wait_for(call, 30)
    assert not caught.value.retryable and "not idempotent" in str(caught.value)
    os.kill(int(marker.read_text()), signal.SIGKILL)  # the script outlived its executor: stop it here


async def test_no_executor_at_all_is_a_retryable_failure(tmp_path: Path) -> None:
    c = SocketExecutor(str(tmp_path / "absent.sock"))
    with pytest.raises(Unavailable, match="unreachable"):
        await c.call(Kill(pid=1, trust=True, start_time=0.0))
    await c.close()


async def test_the_daemons_own_refusal_at_ready_wins_and_nothing_changes(executors: Executors,
                                                                       client: SocketExecutor) -> None:
    executors.start()
    path = executors.base / "root" / "evil.exe"
    path.write_bytes(b"MZ")

    class RateLimited(Exception):
        pass

    def limit() -> None:
        raise RateLimited("rate limit for quarantine_file reached")

    with pytest.raises(RateLimited):
        await asyncio.wait_for(client.call(Quarantine(str(path)), limit), 30)
    assert path.read_bytes() == b"MZ"
    done = await asyncio.wait_for(client.call(Quarantine(str(path)), lambda: None), 30)
    assert done.value["already"] is False and not path.exists()  # the same connection goes on working


async def test_requests_beyond_the_executor_s_limit_in_flight_wait_for_a_place(
        executors: Executors, client: SocketExecutor) -> None:
    # The executor refuses a request past MAX_INFLIGHT on one connection (`busy`); the daemon's client waits
    # for a place instead: with engine.max_concurrent_runs raised, a refused quarantine failed its attempt.
    from sdd.executor.protocol import MAX_INFLIGHT

    executors.start()
    fifo = executors.base / "release"
    os.mkfifo(fifo)
    path = executors.scripts / "held.sh"
    path.write_text(f"#!/bin/sh\nexec cat {fifo}\n")  # each waits until the test opens the FIFO to write
    os.chmod(path, 0o755)
    calls = [asyncio.ensure_future(client.call(RunScript(str(path), timeout=120.0))) for _ in range(MAX_INFLIGHT + 2)]
    try:
        await asyncio.to_thread(wait_until, lambda: len(_readers(fifo)) == MAX_INFLIGHT, "every place taken")
        assert not any(c.done() for c in calls)  # the last two wait: none refused
        writer = await asyncio.to_thread(open, fifo, "w")  # the readers return (EOF once it is closed)
        writer.close()
        await asyncio.to_thread(wait_until, lambda: len(_readers(fifo)) == 2, "the two that waited running")
        writer = await asyncio.to_thread(open, fifo, "w")
        writer.close()
        done = await asyncio.wait_for(asyncio.gather(*calls), 60)
        assert [d.value["returncode"] for d in done] == [0] * (MAX_INFLIGHT + 2)
    finally:  # a failure must not leave scripts blocked on the FIFO for ever
        for pid in _readers(fifo):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for c in calls:
            c.cancel()
        await asyncio.gather(*calls, return_exceptions=True)


def _readers(fifo: Path) -> list[int]:
    """The scripts' `cat FIFO` processes (each blocked opening it until a writer comes), from /proc."""
    want = f"cat\0{fifo}\0".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if fh.read() == want:
                    found.append(int(pid))
        except OSError:
            pass
    return found
