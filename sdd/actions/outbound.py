"""Calls that wait on a remote party (an SMTP relay, a webhook's HTTP server), in threads of their own.

A mail relay that accepts connections and never answers held each mail for its timeout (30 s) in a thread
of asyncio's default pool, the six threads that local work shares (reports, quarantine's index look-ups),
and held its run's `max_concurrent_runs` slot meanwhile: in an outbreak, the sixteen runs that reached their
email step stopped every other detection's quarantine for a minute. Here:
- such a call runs in a thread of its own, at most OUTBOUND_THREADS at once; calls beyond them wait on the
  event loop, and the caller's `before` check (the integration's circuit breaker) is made when the call gets its
  thread, not when it joined the line: once the breaker has opened, the calls still in line fail at once
  instead of each waiting out the timeout again;
- once a call has kept its step waiting for LEND_AFTER seconds, its run lends its slot until the call returns
  (`lending.lent`): the daemon does not count it against `max_concurrent_runs` meanwhile (up to a bound,
  `dispatch.dispatcher.OUTBOUND_RUNS_FACTOR`), so the next detections are contained. A relay that answers at
  once changes nothing: its runs keep their slots;
- each call has a daemon thread of its own (a thread costs ~0.1 ms; the line above bounds how many): a
  pool's threads are joined when the interpreter exits, so a session to a silent relay held the daemon's
  stop for the relay's timeout (29 s of a 2 s `shutdown_grace`), past systemd's `TimeoutStopSec` once a
  retry began late. The run was interrupted and recorded so by then; nothing waits for that thread.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from sdd.executor.threads import in_own_thread

from .lending import LEND_AFTER, lent

T = TypeVar("T")

# Calls talking to remote parties at once: as many as asyncio's default pool has threads, so that mail and
# webhooks keep the concurrency they had there (more, in an outbreak, only took CPU from the scanner).
OUTBOUND_THREADS = min(32, (os.cpu_count() or 1) + 4)

_lines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _line(loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
    line = _lines.get(loop)
    if line is None:
        line = _lines[loop] = asyncio.Semaphore(OUTBOUND_THREADS)
    return line


async def call(fn: Callable[..., T], *args: Any, on_outbound: Callable[[str, bool], None] | None = None,
               before: Callable[[], None] | None = None) -> T:
    """`fn(*args)` in a thread of its own, with the caller's context (as `asyncio.to_thread`); `before()` first,
    on the event loop, once a thread is free (it raises to refuse the call). After LEND_AFTER seconds the run
    of the step calling it is reported waiting on the network (`on_outbound(run_id, True)`) until it ends."""
    loop = asyncio.get_running_loop()
    async with lent(on_outbound), _line(loop):
        if before is not None:
            before()
        return await in_own_thread(fn, *args, name="sdd-outbound")


__all__ = ["LEND_AFTER", "OUTBOUND_THREADS", "call"]
