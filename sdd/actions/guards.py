"""Guards that keep a detection storm or a dead peer from turning the daemon against the machine.

- Rate limits: at most N calls of a destructive action per sliding window (`[actions.rate_limits]`). A step
  that finds the window full WAITS for a slot (`async with guards.slot(action)`), in FIFO order of when it
  began waiting, bounded by its own timeout: confirmed work is held, never dropped. The window is rebuilt at
  start-up from the acts the audit trail records (`seed`), so a restart does not let a burst through, and
  steps that were waiting when the daemon stopped keep their place in line (`restore_waiters`).
- Circuit breakers, one per integration (a webhook's host, the SMTP relay): after `breaker_failures`
  consecutive failures the breaker opens and calls fail fast for `breaker_reset` seconds; then one trial
  call is let through (half-open), whose outcome closes or re-opens it. In memory: a restart closes them,
  the conservative direction for a breaker.

A guard *trips* when a rate limit is reached with a step waiting, or a breaker opens; `on_trip` hears of it
once per trip (not once per waiter), and the trip is over when the last waiter got its slot (or the breaker
closed). Both show in `status` through `status()`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from sdd.config import RateLimit

from .errors import BreakerOpen, Forbidden, RateLimited


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class Trip:
    """A guard that started holding work back: `guard` is "rate_limit:ACTION" or "breaker:KEY"."""

    guard: str
    reason: str
    at: float                       # time.time()
    action: str | None = None
    limit: int | None = None
    per_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"guard": self.guard, "reason": self.reason, "at": self.at, "action": self.action,
                "limit": self.limit, "per_seconds": self.per_seconds}


@dataclass
class _Breaker:
    failures: int = 0
    state: BreakerState = BreakerState.CLOSED
    opened_at: float = 0.0
    trial_in_flight: bool = False
    last_error: str = ""


@dataclass(order=True)
class _Waiter:
    since: float                    # wall time the step began waiting (kept across a restart)
    seq: int
    future: asyncio.Future[None] = field(compare=False)
    key: str = field(compare=False, default="")


# (since, "run_id:step_id") of a step that waited before the restart.
WaitingSince = tuple[float, str]
# on_wait(reason or None, since): the step tells its engine it waits / waits no more (awaited).
OnWait = Callable[[str | None, float], Awaitable[None]]


class Slot:
    """One reserved call of a rate-limited action. `use()` counts it at the moment of acting (callable from a
    worker thread); a slot left unused when its `async with` ends is given back to the next waiter."""

    __slots__ = ("_action", "_guards", "_held")

    def __init__(self, guards: Guards | None, action: str) -> None:
        self._guards = guards
        self._action = action
        self._held = guards is not None

    def use(self) -> None:
        if self._held and self._guards is not None:
            self._held = False
            self._guards._use(self._action)

    def _give_back(self) -> None:
        if self._held and self._guards is not None:
            self._held = False
            self._guards._give_back(self._action)


class Guards:
    """Rate limits and circuit breakers; thread-safe because email, webhooks and the vault's worker threads
    report from outside the loop. Waiting happens on the loop that calls `slot()`."""

    def __init__(self, rate_limits: Mapping[str, RateLimit], breaker_failures: int, breaker_reset: float,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 on_trip: Callable[[Trip], None] | None = None) -> None:
        self._limits = dict(rate_limits)
        self._calls: dict[str, deque[float]] = {name: deque() for name in self._limits}
        self._reserved: dict[str, int] = dict.fromkeys(self._limits, 0)
        self._waiters: dict[str, list[_Waiter]] = {name: [] for name in self._limits}
        self._tripped: dict[str, float] = {}          # action → wall time its current trip began
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._restored: dict[str, float] = {}         # "run_id:step_id" → since, of waiters before a restart
        self._seq = itertools.count()
        self._failures = breaker_failures
        self._reset = breaker_reset
        self._breakers: dict[str, _Breaker] = {}
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_trip = on_trip

    # -- durable state -------------------------------------------------------------------------------
    def seed(self, acts: Iterable[tuple[str, float]]) -> None:
        """Count acts that happened before this start ((action, wall time), from the audit trail) in their
        windows, so the limit holds across a restart."""
        now, wall = self._clock(), self._wall()
        with self._lock:
            for action, at in sorted(acts, key=lambda a: a[1]):
                limit = self._limits.get(action)
                if limit is None or wall - at >= limit.per_seconds or at > wall:
                    continue
                self._calls.setdefault(action, deque()).append(now - (wall - at))

    def restore_waiters(self, waiting: Iterable[WaitingSince]) -> None:
        """Steps that were waiting when the daemon stopped: when they wait again (resumed by recovery) they
        keep the place in line they had (FIFO by the time they first began waiting)."""
        with self._lock:
            for since, key in waiting:
                self._restored[key] = since

    # -- rate limits ---------------------------------------------------------------------------------
    @asynccontextmanager
    async def slot(self, action: str, *, key: str = "", on_wait: OnWait | None = None) -> AsyncIterator[Slot]:
        """Reserve one call of `action`, waiting for a free slot when its window is full (FIFO; cancelled by
        the step's timeout like any await). Raises Forbidden when the action is disabled (`[0, ...]`).
        `key` names the step ("run_id:step_id") so a wait resumed after a restart keeps its place;
        `on_wait(reason, since)` is awaited before the step joins the line and `on_wait(None, since)` once
        it got its slot."""
        limit = self._limits.get(action)
        if limit is None:
            yield Slot(None, action)
            return
        if limit.count == 0:
            self.acquire(action)  # raises Forbidden (a disabled action is refused, not waited for)
        self._loop = asyncio.get_running_loop()
        with self._lock:
            since = self._restored.pop(key, None) if key else None
            free = not self._waiters[action] and self._room(action, limit) > 0
            if free:
                self._reserved[action] += 1
        if not free:
            await self._wait(action, limit, key, self._wall() if since is None else since, on_wait)
        slot = Slot(self, action)
        try:
            yield slot
        finally:
            slot._give_back()

    async def _wait(self, action: str, limit: RateLimit, key: str, since: float, on_wait: OnWait | None) -> None:
        reason = f"rate limit for {action} reached ({limit.count} per {limit.per_seconds:g} s): waiting for a slot"
        if on_wait is not None:
            await on_wait(reason, since)  # durable before the step is seen waiting
        assert self._loop is not None
        waiter = _Waiter(since, next(self._seq), self._loop.create_future(), key)
        with self._lock:
            heapq.heappush(self._waiters[action], waiter)
            trip = None
            if action not in self._tripped and self._room(action, limit) <= 0:
                self._tripped[action] = self._wall()
                trip = Trip(f"rate_limit:{action}", reason, self._tripped[action], action, limit.count,
                            limit.per_seconds)
        if trip is not None:
            self._announce(trip)
        self._grant(action)
        try:
            await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                self._give_back(action)  # granted as it was cancelled: the slot goes to the next in line
            else:
                waiter.future.cancel()
                with self._lock:
                    self._drop(action, waiter)
                self._grant(action)
            raise
        if on_wait is not None:
            try:
                await on_wait(None, since)
            except BaseException:
                self._give_back(action)  # cancelled holding its slot: the slot goes to the next in line
                raise

    def _room(self, action: str, limit: RateLimit) -> int:
        """Free slots in `action`'s window now (caller holds the lock)."""
        now = self._clock()
        calls = self._calls.setdefault(action, deque())
        while calls and calls[0] <= now - limit.per_seconds:
            calls.popleft()
        return limit.count - len(calls) - self._reserved.get(action, 0)

    def _drop(self, action: str, waiter: _Waiter) -> None:
        line = self._waiters[action]
        if waiter in line:
            line.remove(waiter)
            heapq.heapify(line)

    def _grant(self, action: str) -> None:
        """Give free slots to the waiters at the head of the line; time the next look when some remain.
        Runs on the loop."""
        limit = self._limits[action]
        timer = self._timers.pop(action, None)
        if timer is not None:
            timer.cancel()
        with self._lock:
            line = self._waiters[action]
            while line and self._room(action, limit) > 0:
                waiter = heapq.heappop(line)
                if waiter.future.done():
                    continue
                self._reserved[action] += 1
                waiter.future.set_result(None)
            if not line:
                self._tripped.pop(action, None)
                return
            calls = self._calls[action]
            delay = (calls[0] + limit.per_seconds - self._clock()) if calls else None
        if delay is not None and self._loop is not None:
            self._timers[action] = self._loop.call_later(max(delay, 0.0) + 0.001, self._grant, action)

    def _use(self, action: str) -> None:
        with self._lock:
            self._reserved[action] = max(0, self._reserved.get(action, 0) - 1)
            self._calls.setdefault(action, deque()).append(self._clock())
            waiting = bool(self._waiters.get(action))
        if waiting:
            self._soon(action)  # the line now waits for this call to leave the window: time that

    def _give_back(self, action: str) -> None:
        with self._lock:
            self._reserved[action] = max(0, self._reserved.get(action, 0) - 1)
        self._soon(action)

    def _soon(self, action: str) -> None:
        """`_grant(action)` on the loop, from the loop or from a worker thread."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._grant(action)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._grant, action)

    def _announce(self, trip: Trip) -> None:
        if self.on_trip is not None:
            self.on_trip(trip)

    def acquire(self, action: str) -> None:
        """Count one call of `action` now, or raise when its window is full (or the action is disabled).
        For callers that cannot wait; a waiting step (`slot`) is served first."""
        limit = self._limits.get(action)
        if limit is None:
            return
        if limit.count == 0:
            raise Forbidden(f"{action} is disabled by actions.rate_limits.{action} = [0, ...]")
        with self._lock:
            if self._waiters.get(action) or self._room(action, limit) <= 0:
                calls = self._calls.get(action) or deque([self._clock()])
                wait = calls[0] + limit.per_seconds - self._clock()
                raise RateLimited(
                    f"rate limit for {action} reached ({limit.count} per {limit.per_seconds:g} s); "
                    f"next call allowed in {max(wait, 0.0):.1f} s")
            self._calls[action].append(self._clock())

    # -- circuit breakers ----------------------------------------------------------------------------
    def before_call(self, key: str) -> None:
        """Raise `BreakerOpen` when calls to `key` should fail fast; let one trial through when due."""
        now = self._clock()
        with self._lock:
            b = self._breakers.setdefault(key, _Breaker())
            if b.state is BreakerState.CLOSED:
                return
            if b.state is BreakerState.OPEN and now - b.opened_at >= self._reset:
                b.state = BreakerState.HALF_OPEN
                b.trial_in_flight = False
            if b.state is BreakerState.HALF_OPEN and not b.trial_in_flight:
                b.trial_in_flight = True
                return
            retry = max(0.0, b.opened_at + self._reset - now)
            raise BreakerOpen(
                f"circuit breaker for {key} is open after {b.failures} consecutive failures "
                f"(last: {b.last_error or 'unknown'}); failing fast for another {retry:.1f} s")

    def record_success(self, key: str) -> None:
        with self._lock:
            self._breakers[key] = _Breaker()

    def record_failure(self, key: str, error: str) -> None:
        now = self._clock()
        trip = None
        with self._lock:
            b = self._breakers.setdefault(key, _Breaker())
            b.failures += 1
            b.last_error = error[:200]
            b.trial_in_flight = False
            if b.state is BreakerState.HALF_OPEN or b.failures >= self._failures:
                if b.state is BreakerState.CLOSED:  # a re-open after a failed trial is the same trip
                    trip = Trip(f"breaker:{key}", f"circuit breaker for {key} opened after {b.failures} consecutive "
                                f"failures (last: {b.last_error or 'unknown'}); failing fast for {self._reset:g} s",
                                self._wall())
                b.state = BreakerState.OPEN
                b.opened_at = now
        if trip is not None:
            self._announce(trip)

    def breaker_state(self, key: str) -> BreakerState:
        with self._lock:
            b = self._breakers.get(key)
            if b is None:
                return BreakerState.CLOSED
            if b.state is BreakerState.OPEN and self._clock() - b.opened_at >= self._reset:
                return BreakerState.HALF_OPEN
            return b.state

    # -- status --------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = self._clock()
        with self._lock:
            limits = {}
            waiting: dict[str, int] = {}
            for name, limit in self._limits.items():
                calls = self._calls.get(name, deque())
                used = sum(1 for t in calls if t > now - limit.per_seconds)
                held = sum(1 for w in self._waiters.get(name, ()) if not w.future.done())
                limits[name] = {"limit": limit.count, "per_seconds": limit.per_seconds, "used": used,
                                "available": max(0, limit.count - used - self._reserved.get(name, 0)),
                                "waiting": held, "tripped_at": self._tripped.get(name)}
                if held:
                    waiting[name] = held
            breakers = {}
            for key, b in self._breakers.items():
                state = b.state
                if state is BreakerState.OPEN and now - b.opened_at >= self._reset:
                    state = BreakerState.HALF_OPEN
                breakers[key] = {
                    "state": state.value, "consecutive_failures": b.failures, "last_error": b.last_error,
                    "retry_in": (round(max(0.0, b.opened_at + self._reset - now), 3)
                                 if state is BreakerState.OPEN else 0.0),
                }
        return {"rate_limits": limits, "breakers": breakers, "waiting": waiting,
                "breaker_failures": self._failures, "breaker_reset": self._reset}
