"""Guards that keep a detection storm or a dead peer from turning the daemon against the machine.

- Rate limits: at most N calls of a destructive action per sliding window (`[actions.rate_limits]`).
- Circuit breakers, one per integration (a webhook's host, the SMTP relay): after `breaker_failures`
  consecutive failures the breaker opens and calls fail fast for `breaker_reset` seconds; then one trial
  call is let through (half-open), whose outcome closes or re-opens it.

Both are in-memory (a restart resets them, which is the conservative direction for a breaker and harmless
for a rate limit) and both show in `status` through `guards_status()`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sdd.config import RateLimit

from .errors import BreakerOpen, Forbidden, RateLimited


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class _Breaker:
    failures: int = 0
    state: BreakerState = BreakerState.CLOSED
    opened_at: float = 0.0
    trial_in_flight: bool = False
    last_error: str = ""


class Guards:
    """Rate limits and circuit breakers; thread-safe because email and webhooks report from worker threads."""

    def __init__(self, rate_limits: Mapping[str, RateLimit], breaker_failures: int, breaker_reset: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = dict(rate_limits)
        self._calls: dict[str, deque[float]] = {name: deque() for name in self._limits}
        self._failures = breaker_failures
        self._reset = breaker_reset
        self._breakers: dict[str, _Breaker] = {}
        self._clock = clock
        self._lock = threading.Lock()

    # -- rate limits ---------------------------------------------------------------------------------
    def acquire(self, action: str) -> None:
        """Count one call of `action`, or raise when its window is full (or the action is disabled)."""
        limit = self._limits.get(action)
        if limit is None:
            return
        if limit.count == 0:
            raise Forbidden(f"{action} is disabled by actions.rate_limits.{action} = [0, ...]")
        now = self._clock()
        with self._lock:
            calls = self._calls.setdefault(action, deque())
            while calls and calls[0] <= now - limit.per_seconds:
                calls.popleft()
            if len(calls) >= limit.count:
                wait = calls[0] + limit.per_seconds - now
                raise RateLimited(
                    f"rate limit for {action} reached ({limit.count} per {limit.per_seconds:g} s); "
                    f"next call allowed in {wait:.1f} s")
            calls.append(now)

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
        with self._lock:
            b = self._breakers.setdefault(key, _Breaker())
            b.failures += 1
            b.last_error = error[:200]
            b.trial_in_flight = False
            if b.state is BreakerState.HALF_OPEN or b.failures >= self._failures:
                b.state = BreakerState.OPEN
                b.opened_at = now

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
            for name, limit in self._limits.items():
                calls = self._calls.get(name, deque())
                used = sum(1 for t in calls if t > now - limit.per_seconds)
                limits[name] = {"limit": limit.count, "per_seconds": limit.per_seconds, "used": used,
                                "available": max(0, limit.count - used)}
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
        return {"rate_limits": limits, "breakers": breakers,
                "breaker_failures": self._failures, "breaker_reset": self._reset}
