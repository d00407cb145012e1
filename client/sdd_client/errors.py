"""Every error the sdd client library raises, in one hierarchy; `exit_code` is what sddctl exits with.

Exit codes (the contract's): 1 a failed operation, 2 a usage error, 3 the daemon is unreachable.
"""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    """The `code` of an error reply on the socket."""

    INVALID_PARAMS = "invalid_params"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    INTERNAL = "internal"
    UNKNOWN_METHOD = "unknown_method"
    BAD_FRAME = "bad_frame"
    BUSY = "busy"  # the daemon has too many connections; try again later

    def __str__(self) -> str:
        return self.value


class ClientError(Exception):
    """Base of everything sdd_client raises."""

    exit_code = 1


class ProtocolError(ClientError):
    """A frame that cannot be accepted (either direction). The connection is closed after it."""

    code = ErrorCode.BAD_FRAME


class FrameTooLarge(ProtocolError):
    """The length prefix announces more than the limit, or a message would not fit in one frame."""


class MalformedFrame(ProtocolError):
    """The payload is not one msgpack map within the limits, or not a well-formed message."""


class TruncatedFrame(ProtocolError):
    """The peer closed the connection in the middle of a frame."""


class DaemonUnreachable(ClientError):
    """Nothing answers on the socket (missing, refused, permission denied, closed on us)."""

    exit_code = 3

    def __init__(self, socket_path: str, reason: str) -> None:
        self.socket_path = socket_path
        self.reason = reason
        super().__init__(f"cannot reach sdd at {socket_path}: {reason}")


class ApiError(ClientError):
    """The daemon answered with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        # Bad parameters are the caller's usage error; everything else is a failed operation.
        return 2 if self.code == ErrorCode.INVALID_PARAMS else 1


__all__ = [
    "ApiError",
    "ClientError",
    "DaemonUnreachable",
    "ErrorCode",
    "FrameTooLarge",
    "MalformedFrame",
    "ProtocolError",
    "TruncatedFrame",
]
