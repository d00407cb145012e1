"""The exported D-Bus interface `org.searchanddestroy.Sdd1`: its signals and read-only properties."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from dbus_next.constants import PropertyAccess
from dbus_next.service import ServiceInterface, dbus_property, signal

from .model import INTERFACE, SIGNALS, Properties

_F = TypeVar("_F", bound=Callable[..., Any])


def _dbus_type(signature: str) -> Callable[[_F], _F]:
    """Give a member its D-Bus signature the way dbus-next reads it (the return annotation), without
    string annotations that linters and type checkers take for undefined names."""

    def decorate(fn: _F) -> _F:
        fn.__annotations__ = {"return": signature}
        return fn

    return decorate


class Sdd1Interface(ServiceInterface):  # type: ignore[misc]
    """The exported interface. Properties read the daemon's status on every Get (it is cheap)."""

    def __init__(self, properties: Callable[[], Properties]) -> None:
        super().__init__(INTERFACE)
        self._properties = properties

    @signal()
    @_dbus_type(SIGNALS["DetectionReceived"])
    def DetectionReceived(self, detection_id, type_, severity, file_path):  # type: ignore[no-untyped-def]
        return [detection_id, type_, severity, file_path]

    @signal()
    @_dbus_type(SIGNALS["RunStarted"])
    def RunStarted(self, run_id, workflow_id, detection_id):  # type: ignore[no-untyped-def]
        return [run_id, workflow_id, detection_id]

    @signal()
    @_dbus_type(SIGNALS["StepFinished"])
    def StepFinished(self, run_id, step_id, status, seconds):  # type: ignore[no-untyped-def]
        return [run_id, step_id, status, seconds]

    @signal()
    @_dbus_type(SIGNALS["RunFinished"])
    def RunFinished(self, run_id, workflow_id, status, seconds):  # type: ignore[no-untyped-def]
        return [run_id, workflow_id, status, seconds]

    @signal()
    @_dbus_type(SIGNALS["Notification"])
    def Notification(self, title, body, urgency):  # type: ignore[no-untyped-def]
        return [title, body, urgency]

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_type("s")
    def Version(self):  # type: ignore[no-untyped-def]
        return self._properties().version

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_type("s")
    def State(self):  # type: ignore[no-untyped-def]
        return self._properties().state

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_type("u")
    def ActiveRuns(self):  # type: ignore[no-untyped-def]
        return self._properties().active_runs

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_type("u")
    def QueuedDetections(self):  # type: ignore[no-untyped-def]
        return self._properties().queued_detections
