"""What a call into the daemon (its `Control`, for the API and the NATS intake) can fail with; the API maps each
to its error code."""

from __future__ import annotations


class DaemonError(Exception):
    """A Control call failed; subclasses say how (the API maps them to error codes)."""


class UnknownWorkflow(DaemonError, LookupError):
    pass


class UnknownRun(DaemonError, LookupError):
    pass


class InvalidRequest(DaemonError, ValueError):
    pass


class NotAccepting(DaemonError):
    """The daemon is stopping and starts nothing new."""


__all__ = ["DaemonError", "InvalidRequest", "NotAccepting", "UnknownRun", "UnknownWorkflow"]
