"""What the daemon looks like on the bus: its names, the signals hub events become, the property values its
status gives, and the cleaning that makes hostile detection fields safe to send. Pure: no dbus-next here."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdd import hub as hub_events

BUS_NAME = "org.searchanddestroy.Sdd1"
OBJECT_PATH = "/org/searchanddestroy/Sdd1"
INTERFACE = "org.searchanddestroy.Sdd1"


class BridgeState(str, enum.Enum):
    """Where the bridge's connection stands (`status()["bus"]["state"]`)."""

    DISABLED = "disabled"  # bus = "none", or an unusable bus spec
    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"


# Signals go out in batches: at most one write per SIGNAL_WINDOW seconds, or per BURST_WINDOW while a burst
# goes on (a desktop does not see 10 ms; dbus-daemon and the daemon wake a fifth as often). A burst: the last
# write carried BURST_EVENTS events or more. The bridge's writes to the bus and the daemon's to the bridge
# process both keep to it.
SIGNAL_WINDOW = 0.002
BURST_WINDOW = 0.01
BURST_EVENTS = 32


def next_window(events_in_last_batch: int) -> float:
    """How long to gather signals before the next write, after a write of this many events."""
    return BURST_WINDOW if events_in_last_batch >= BURST_EVENTS else SIGNAL_WINDOW


# The contract's signals and their D-Bus signatures: the exported interface and the wire encoder read them here.
SIGNALS = {
    "DetectionReceived": "ssss",
    "RunStarted": "sss",
    "StepFinished": "sssd",
    "RunFinished": "sssd",
    "Notification": "sss",
}

# D-Bus strings must be valid UTF-8 without NUL (the bus disconnects a sender of an invalid message), and
# detection fields are hostile input: they are cleaned and capped before they reach the wire.
MAX_STRING = 4096
_U32_MAX = 2**32 - 1

# Hub events that can change a property value: each schedules a (coalesced) PropertiesChanged check.
PROPERTY_TRIGGERS = frozenset(
    {
        hub_events.STATUS_CHANGED,
        hub_events.RUN_STARTED,
        hub_events.RUN_FINISHED,
        hub_events.DETECTION_RECEIVED,
        hub_events.DETECTION_DUPLICATE,
        hub_events.DETECTION_EXCLUDED,
        hub_events.DETECTION_REJECTED,
        hub_events.LAGGED,
    }
)
SIGNAL_EVENTS = frozenset(
    {
        hub_events.DETECTION_RECEIVED,
        hub_events.RUN_STARTED,
        hub_events.STEP_FINISHED,
        hub_events.RUN_FINISHED,
        hub_events.NOTIFICATION,
    }
)


def clean_str(value: Any) -> str:
    """A value as a D-Bus-safe string: None → "", no NUL, no lone surrogates, at most MAX_STRING chars."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_STRING:
        text = text[: MAX_STRING - 1] + "…"
    if not text.isascii():  # (ASCII, the usual case, is valid UTF-8 as it is)
        # surrogateescape'd file names (non-UTF-8 bytes) cannot be encoded as UTF-8: show them escaped.
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def clean_double(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def clean_u32(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return 0
    return min(max(number, 0), _U32_MAX)


@dataclass(frozen=True)
class Properties:
    version: str
    state: str
    active_runs: int
    queued_detections: int

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> Properties:
        return cls(
            version=clean_str(status.get("version")),
            state=clean_str(status.get("state")),
            active_runs=clean_u32(status.get("active_runs")),
            queued_detections=clean_u32(status.get("queued_detections")),
        )

    def as_dbus(self) -> dict[str, Any]:
        return {
            "Version": self.version,
            "State": self.state,
            "ActiveRuns": self.active_runs,
            "QueuedDetections": self.queued_detections,
        }


def signal_for(event: str, data: Mapping[str, Any]) -> tuple[str, list[Any]] | None:
    """The (member, arguments) of the signal a hub event becomes, or None when it is not one."""
    s, d = clean_str, clean_double
    if event == hub_events.DETECTION_RECEIVED:
        return "DetectionReceived", [
            s(data.get("detection_id")),
            s(data.get("type")),
            s(data.get("severity")),
            s(data.get("file_path")),
        ]
    if event == hub_events.RUN_STARTED:
        return "RunStarted", [s(data.get("run_id")), s(data.get("workflow_id")), s(data.get("detection_id"))]
    if event == hub_events.STEP_FINISHED:
        return "StepFinished", [
            s(data.get("run_id")),
            s(data.get("step_id")),
            s(data.get("status")),
            d(data.get("seconds")),
        ]
    if event == hub_events.RUN_FINISHED:
        return "RunFinished", [
            s(data.get("run_id")),
            s(data.get("workflow_id")),
            s(data.get("status")),
            d(data.get("seconds")),
        ]
    if event == hub_events.NOTIFICATION:
        return "Notification", [s(data.get("title")), s(data.get("body")), s(data.get("urgency") or "normal")]
    return None
