"""A step that waits on another party lends its run's slot; a lane bounds how many such waits go at once.

`max_concurrent_runs` bounds the runs that act at once. A run whose step only waits (on a mail relay, a
webhook's server, a scanner) acts on nothing meanwhile, so after LEND_AFTER seconds of waiting it is said to
wait on another party (`ActionServices.on_outbound`, the daemon's `Dispatcher.run_outbound`) and does not count
until the wait ends: a relay that never answers, or a clamd that hangs, must not hold up the quarantine of the
next detections. A wait that ends at once changes nothing (its run keeps its slot).

What the lent slots no longer bound, a lane does: `Lane` lets at most `limit` callers in at once, first come
first served; the limit is read at each entry and exit, so a reload may change it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable

from sdd.engine.registry import current_step

LEND_AFTER = 0.25      # seconds a step may wait before its run lends its slot


@contextlib.asynccontextmanager
async def lent(on_outbound: Callable[[str, bool], None] | None) -> AsyncIterator[None]:
    """Inside: once LEND_AFTER has passed, the calling step's run is reported waiting on another party
    (`on_outbound(run_id, True)`), and (run_id, False) when the block ends. Without a hook or outside a step,
    nothing."""
    step = current_step()
    if on_outbound is None or step is None:
        yield
        return
    lending = False

    def lend() -> None:
        nonlocal lending
        lending = True
        on_outbound(step.run_id, True)

    timer = asyncio.get_running_loop().call_later(LEND_AFTER, lend)
    try:
        yield
    finally:
        timer.cancel()
        if lending:
            on_outbound(step.run_id, False)


class Lane:
    """At most `limit` holders at once (`async with lane:`), FIFO. `limit` may be changed at any time: a
    lower one lets no one in until enough have left, a higher one lets those waiting in at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for w in list(self._waiters) if not w.done())  # (a copy: a scrape reads it from its thread)

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    async def __aenter__(self) -> None:
        if self.busy < self.limit and not self.waiting:
            self.busy += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # resolved by `_wake` with our place already counted in `busy`
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.busy -= 1  # let in, but cancelled before it could run: the place goes to the next
                self._wake()
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    async def __aexit__(self, *exc: object) -> None:
        self.busy -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.busy < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.busy += 1
                waiter.set_result(None)


__all__ = ["LEND_AFTER", "Lane", "lent"]
