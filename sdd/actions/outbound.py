"""Calls that wait on a remote party (an SMTP relay, a webhook's HTTP server), in threads of their own.

A mail relay that accepts connections and never answers held each mail for its timeout (30 s) in a thread
of asyncio's default pool, the six threads that local work shares (reports, quarantine's index look-ups),
and held its run's `max_concurrent_runs` slot meanwhile: in an outbreak, the sixteen runs that reached their
email step stopped every other detection's quarantine for a minute. Here such a call runs in a pool of its
own, and while it waits its run is said to wait on the network (`ActionServices.on_outbound`): the daemon
does not count it against `max_concurrent_runs` (up to a bound, `dispatch.dispatcher.OUTBOUND_RUNS_FACTOR`),
so the next detections are contained meanwhile.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sdd.engine.registry import current_step

T = TypeVar("T")

OUTBOUND_THREADS = 32  # calls waiting on remote parties at once; more queue here, holding nothing else

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=OUTBOUND_THREADS, thread_name_prefix="sdd-outbound")
        return _pool


async def call(on_outbound: Callable[[str, bool], None] | None, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in the outbound pool (with the caller's context, as `asyncio.to_thread` does); the run of
    the step calling it is reported waiting on the network (`on_outbound(run_id, True)`) until it returns."""
    step = current_step()
    run_id = step.run_id if step is not None and on_outbound is not None else None
    if run_id is not None:
        on_outbound(run_id, True)  # type: ignore[misc]
    try:
        task = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(_executor(), task)
    finally:
        if run_id is not None:
            on_outbound(run_id, False)  # type: ignore[misc]


__all__ = ["OUTBOUND_THREADS", "call"]
