"""Blocking work that a step's timeout, a cancel or a shutdown can stop without leaving it half-done.

A quarantine copies a file of any size in a worker thread, and a thread cannot be killed. So the work and
the step agree on one *commit point*: before it the work checks an `Abort` between chunks and, when asked
to stop, undoes what it wrote and raises `Aborted`; from the commit point on it is short and finishes no
matter what. The coroutine that started it (`run_abortable`) never leaves while the thread still runs:
cancelled, it asks the work to stop and waits for the thread to end, then either re-raises the
cancellation (not done: nothing left over) or returns the result with `cancelled=True` (done: the caller
records it and returns it, and the engine carries the cancellation on after recording the step). Since
the step has not ended while its thread runs, a retry never runs beside an earlier attempt.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .threads import in_own_thread

T = TypeVar("T")
log = logging.getLogger("sdd.actions")


class Aborted(Exception):
    """Raised inside the worker: the step was stopped before the commit point and nothing was changed."""


class Abort:
    """Shared by a step and its worker thread: `check()` between chunks, `commit()` at the point of no return."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requested = False
        self._committed = False

    def request(self) -> None:
        with self._lock:
            self._requested = True

    def check(self) -> None:
        if self._requested:
            raise Aborted("stopped before anything was changed")

    def commit(self) -> None:
        """From here on the work completes; raises `Aborted` if stopping was asked for first."""
        with self._lock:
            if self._requested:
                raise Aborted("stopped before anything was changed")
            self._committed = True

    @property
    def committed(self) -> bool:
        return self._committed


@dataclass(frozen=True)
class Outcome(Generic[T]):
    value: T
    cancelled: bool   # the step was cancelled after the commit point: done, and must still be recorded


async def settle(awaitable: Awaitable[T]) -> tuple[T, bool]:
    """Await `awaitable` to its end even when this task is cancelled meanwhile (the cancellation is absorbed
    and reported as the second item), so what was started is finished and recorded, not abandoned. If it
    then fails, the cancellation wins: a failure must not look retryable to a run that was stopped."""
    fut = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            return await asyncio.shield(fut), cancelled
        except asyncio.CancelledError:
            if fut.cancelled():
                raise
            cancelled = True
        except Exception as exc:
            if cancelled:
                log.warning("failed while its step was being cancelled: %s", exc)
                raise asyncio.CancelledError from exc
            raise


async def record(awaitable: Awaitable[T], cancelled: bool) -> T:
    """Record an act that has happened (`settle`); when its step was already cancelled (`cancelled`), a
    failure to record ends the step cancelled, as a cancellation absorbed meanwhile does."""
    try:
        value, _ = await settle(awaitable)
    except Exception as exc:
        if cancelled:
            log.warning("could not record an act finished while its step was cancelled: %s", exc)
            raise asyncio.CancelledError from exc
        raise
    return value


async def run_abortable(work: Callable[[Abort], T], abort: Abort | None = None, *,
                        own_thread: str | None = None) -> Outcome[T]:
    """Run `work(abort)` in a thread. Cancelled before its commit point: the work is stopped, its thread
    has ended and the cancellation is re-raised. Cancelled after it: the result, with `cancelled=True`.
    `abort` may be shared by several calls that make up one piece of work (it is then stopped for all).
    `own_thread` (a thread name): a thread of its own rather than one of asyncio's default pool, for work
    that may wait long on another party (`threads.in_own_thread`)."""
    abort = abort or Abort()
    fut = asyncio.ensure_future(asyncio.to_thread(work, abort) if own_thread is None
                                else in_own_thread(work, abort, name=own_thread))
    try:
        return Outcome(await asyncio.shield(fut), False)
    except asyncio.CancelledError:
        if fut.cancelled():
            raise
        abort.request()
    try:
        value, _ = await settle(fut)
    except Aborted:
        raise asyncio.CancelledError from None
    except BaseException:
        if abort.committed:
            raise  # it failed after the commit point: that failure is the step's
        raise asyncio.CancelledError from None
    return Outcome(value, True)
