"""The daemon's Unix-socket API: msgpack frames, SO_PEERCRED authorisation, methods (see docs/api.md)."""

from .errors import AlreadyRunning, ApiError, SocketError
from .server import ApiServer

__all__ = ["AlreadyRunning", "ApiError", "ApiServer", "SocketError"]
