"""Blocking work in a daemon thread of its own, for work that may wait long on another party.

asyncio's default pool has a handful of threads (cpu + 4: six on two cores) that all local work shares: in
the executor every primitive's file work (quarantine, restore, delete) and kill's /proc reads, in the daemon
reports and index look-ups. A scan waiting on a clamd that hangs, or a mail session to a relay that never
answers, held one of them for its whole timeout; six such waits stopped every quarantine. Such work runs
here instead, bounded by its caller (the daemon's scan lane, the outbound line, the executor's requests in
flight). A thread costs ~0.1 ms to start, and a daemon thread is not joined at exit, as a pool's are.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # (its awaiter was cancelled meanwhile)
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def in_own_thread(fn: Callable[..., T], *args: Any, name: str) -> asyncio.Future[T]:
    """`fn(*args)` in a daemon thread named `name`, with the caller's context (as `asyncio.to_thread`); the
    future resolves on the running loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def work() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (context.run(fn, *args), None)
        except BaseException as exc:  # noqa: BLE001 -- handed to the awaiting coroutine, which decides
            outcome = (None, exc)
        try:
            loop.call_soon_threadsafe(_settle, future, *outcome)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=work, name=name, daemon=True).start()
    return future


__all__ = ["in_own_thread"]
