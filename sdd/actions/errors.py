"""Errors raised by the built-in actions.

The engine decides about retries from the error class, so actions raise the engine's vocabulary
(`InvalidParams`, `Forbidden`, `NotFound`, `Conflict`, `ActionError(retryable=)`), re-exported here, plus
the two guard errors below, which callers (and `status`) can tell apart from ordinary failures.
"""

from __future__ import annotations

from sdd.engine.errors import (
    ActionError,
    Conflict,
    Forbidden,
    InvalidParams,
    NonRetryableError,
    NotFound,
)


class RateLimited(ActionError):
    """A destructive action hit its configured rate limit; transient, so another attempt may succeed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class BreakerOpen(ActionError):
    """An integration's circuit breaker is open: fail fast instead of piling up retries on a dead peer."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


__all__ = [
    "ActionError",
    "BreakerOpen",
    "Conflict",
    "Forbidden",
    "InvalidParams",
    "NonRetryableError",
    "NotFound",
    "RateLimited",
]
