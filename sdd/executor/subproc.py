"""Running external programs (scanner, updater, scripts) safely: an argv list and `execve`, never a shell;
a new session so a timeout or a cancelled run kills the whole process group; output kept in bounded
head/tail buffers so a chatty program cannot exhaust memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import NotFound, PrimitiveError

TERM_GRACE = 2.0


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout_head: bytes          # the first `head_limit` bytes (scripts' JSON results)
    stdout_truncated: bool
    stdout_tail: str
    stderr_tail: str


class _Sink:
    def __init__(self, head_limit: int, tail_limit: int, on_line: Callable[[str], None] | None) -> None:
        self.head = bytearray()
        self.head_limit = head_limit
        self.truncated = False
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.tail_limit = tail_limit
        self.on_line = on_line
        self.partial = b""

    def feed(self, data: bytes) -> None:
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += data[:room]
        if len(data) > room:
            self.truncated = True
        self.tail.append(data)
        self.tail_size += len(data)
        while self.tail_size - len(self.tail[0]) >= self.tail_limit:
            self.tail_size -= len(self.tail.popleft())
        if self.on_line is not None:
            lines = (self.partial + data).split(b"\n")
            self.partial = lines.pop()[-65536:]
            for line in lines:
                self.on_line(line.decode("utf-8", "replace"))

    def close(self) -> None:
        if self.on_line is not None and self.partial:
            self.on_line(self.partial.decode("utf-8", "replace"))
            self.partial = b""

    def tail_text(self) -> str:
        return b"".join(self.tail)[-self.tail_limit:].decode("utf-8", "replace")


async def _pump(stream: asyncio.StreamReader | None, sink: _Sink) -> None:
    if stream is None:
        return
    while data := await stream.read(65536):
        sink.feed(data)
    sink.close()


async def _feed_stdin(proc: asyncio.subprocess.Process, data: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(data)
        await proc.stdin.drain()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.close()


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def run_argv(argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
                   stdin: bytes | None = None, cwd: str = "/", head_limit: int = 1 << 20,
                   tail_limit: int = 16 * 1024, on_stdout_line: Callable[[str], None] | None = None,
                   what: str = "program", pass_fds: Sequence[int] = ()) -> Completed:
    """Run `argv` to completion within `timeout` seconds; on timeout or cancellation the whole process
    group gets SIGTERM, then SIGKILL after a short grace. `pass_fds` are inherited under the same numbers."""
    starting = asyncio.ensure_future(asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True, pass_fds=tuple(pass_fds)))
    try:
        proc = await asyncio.shield(starting)
    except FileNotFoundError:
        raise NotFound(f"{what}: {argv[0]} not found") from None
    except PermissionError:
        raise PrimitiveError(f"{what}: {argv[0]} is not executable", retryable=False) from None
    except asyncio.CancelledError:
        await _kill_started(starting)
        raise
    out = _Sink(head_limit, tail_limit, on_stdout_line)
    err = _Sink(0, tail_limit, None)
    tasks = [asyncio.ensure_future(_pump(proc.stdout, out)), asyncio.ensure_future(_pump(proc.stderr, err))]
    if stdin is not None:
        tasks.append(asyncio.ensure_future(_feed_stdin(proc, stdin)))
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*tasks)
            returncode = await proc.wait()
    except TimeoutError:
        await _stop_group(proc, tasks)
        raise PrimitiveError(f"{what}: timed out after {timeout:g} s; its process group was killed "
                          f"(stderr: {err.tail_text()[-500:]!r})") from None
    except BaseException:
        # Cancelled (run cancelled, step timeout): the group must not outlive the step.
        _killpg(proc.pid, signal.SIGKILL)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(proc.wait(), 5)
        raise
    return Completed(tuple(argv), returncode, bytes(out.head), out.truncated, out.tail_text(), err.tail_text())


async def _kill_started(starting: asyncio.Future[asyncio.subprocess.Process]) -> None:
    """Cancelled while the program was starting: it is running already (the fork is done before the first
    await), and asyncio's own clean-up on cancelling the start would kill only the group's leader, then wait
    for pipes that the leader's children still hold. So the start is let finish, then the group is killed.
    (A cancel of every task at once, as at the loop's shutdown, still reaches the start itself.)"""
    with contextlib.suppress(BaseException):
        proc = await asyncio.wait_for(asyncio.shield(starting), 5)
        _killpg(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.communicate(), 5)


async def _stop_group(proc: asyncio.subprocess.Process, tasks: Sequence[asyncio.Future[Any]]) -> None:
    _killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), TERM_GRACE)
    except TimeoutError:
        pass
    _killpg(proc.pid, signal.SIGKILL)
    for task in tasks:
        task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(proc.wait(), 5)
