"""The executor's errors: what a primitive or the executor's own checks refuse, engine-free.

The root side imports nothing from the engine, so it has its own small hierarchy. Each error has a `code`
(the wire's name for it) and `retryable`; the daemon's side of the seam (`sdd/actions/executing.py`) turns
them into the engine's vocabulary (`Forbidden`, `NotFound`, `Conflict`, `InvalidParams`, `ActionError`).
"""

from __future__ import annotations

from typing import Any


class PrimitiveError(Exception):
    """A primitive failed. `retryable=False` says another attempt cannot fix it."""

    code = "failed"

    def __init__(self, message: str = "", retryable: bool = True, details: dict[str, Any] | None = None) -> None:
        self.retryable = retryable
        # Plain data the caller may need even on failure (kill_process: the start time it pinned).
        self.details = details or {}
        super().__init__(message)


class _Final(PrimitiveError):
    def __init__(self, message: str = "", details: dict[str, Any] | None = None) -> None:
        super().__init__(message, retryable=False, details=details)


class InvalidRequest(_Final):
    """A request or parameter of the wrong shape, type or range."""

    code = "invalid_params"


class Forbidden(_Final):
    """Refused on policy: outside the allowed roots, a symlink, a protected process, an unlinked pid."""

    code = "forbidden"


class NotFound(_Final):
    """What the primitive should act on does not exist."""

    code = "not_found"


class Conflict(_Final):
    """The target is in a state that prevents the primitive (exists already, changed, pid reused)."""

    code = "conflict"


class Unavailable(PrimitiveError):
    """The executor could not be reached or died mid-request: the step may be tried again."""

    code = "unavailable"


BY_CODE: dict[str, type[PrimitiveError]] = {
    c.code: c for c in (PrimitiveError, InvalidRequest, Forbidden, NotFound, Conflict, Unavailable)}


def from_wire(code: str, message: str, retryable: bool, details: dict[str, Any] | None) -> PrimitiveError:
    """The error an executor's reply names (an unknown code is a retryable failure)."""
    cls = BY_CODE.get(code, PrimitiveError)
    if cls in (PrimitiveError, Unavailable):
        return cls(message, retryable=retryable, details=details)
    return cls(message, details=details)  # type: ignore[call-arg]


__all__ = ["BY_CODE", "Conflict", "Forbidden", "InvalidRequest", "NotFound", "PrimitiveError", "Unavailable",
           "from_wire"]
