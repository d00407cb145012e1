"""Errors of the socket API. `ApiError` subclasses become error replies; the others stop the server's start."""

from __future__ import annotations

from sdd_client.errors import ErrorCode


class ApiError(Exception):
    """A method failed in a way the caller should hear about: becomes `{"code": ..., "message": ...}`."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidParams(ApiError):
    code = ErrorCode.INVALID_PARAMS


class Forbidden(ApiError):
    code = ErrorCode.FORBIDDEN


class NotFound(ApiError):
    code = ErrorCode.NOT_FOUND


class Conflict(ApiError):
    code = ErrorCode.CONFLICT


class UnknownMethod(ApiError):
    code = ErrorCode.UNKNOWN_METHOD


class SocketError(Exception):
    """The API socket cannot be set up (bad path, not a socket, permissions)."""


class AlreadyRunning(SocketError):
    """Another sdd already answers on the socket."""


__all__ = [
    "AlreadyRunning",
    "ApiError",
    "Conflict",
    "ErrorCode",
    "Forbidden",
    "InvalidParams",
    "NotFound",
    "SocketError",
    "UnknownMethod",
]
