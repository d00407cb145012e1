"""What sdd-notifier shows for which D-Bus signal: pure functions, no bus.

The daemon's signals (contract, "D-Bus") carry strings from hostile detections (file paths, threat names),
so everything shown is cleaned: control characters removed, length capped, and markup escaped when the
notification server would otherwise interpret it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Signals of org.searchanddestroy.Sdd1 the notifier reacts to.
DETECTION_RECEIVED = "DetectionReceived"
RUN_FINISHED = "RunFinished"
NOTIFICATION = "Notification"

NOTIFY_SEVERITIES = frozenset({"critical", "high"})
NOTIFY_RUN_STATUSES = frozenset({"failed", "rolled_back", "interrupted"})

MAX_SUMMARY = 120
MAX_BODY = 1000


class Urgency(enum.IntEnum):
    """The `urgency` hint of the Desktop Notifications spec (a byte)."""

    LOW = 0
    NORMAL = 1
    CRITICAL = 2

    @classmethod
    def from_name(cls, name: str) -> Urgency:
        """`low` | `normal` | `critical` (what a workflow asks for); anything else is `normal`."""
        try:
            return cls[name.strip().upper()]
        except KeyError:
            return cls.NORMAL


@dataclass(frozen=True)
class Notice:
    """One desktop notification to show."""

    summary: str
    body: str
    urgency: Urgency
    icon: str = "security-high"
    category: str = "device"


def clean(text: Any, limit: int) -> str:
    """Printable text of at most `limit` characters (control characters, including bidi overrides that
    could disguise a file name, become spaces or are dropped)."""
    s = "" if text is None else str(text)
    out = []
    for ch in s:
        if ch in "\n\t":
            out.append(ch if ch == "\n" else " ")
        elif ord(ch) < 32 or ord(ch) == 127 or 0x80 <= ord(ch) < 0xA0:
            out.append(" ")
        elif ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f":
            continue
        else:
            out.append(ch)
    s = "".join(out).strip()
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s


def escape_markup(text: str) -> str:
    """Escape for servers with the `body-markup` capability (a subset of HTML)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _seconds(value: Any) -> str:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(seconds) or seconds < 0:
        return ""
    if seconds < 60:
        return f" after {seconds:.1f} s"
    return f" after {seconds / 60:.1f} min"


_RUN_WORDS = {"failed": "failed", "rolled_back": "was rolled back", "interrupted": "was interrupted"}


def notice_for(member: str, args: Sequence[Any]) -> Notice | None:
    """The notice for a signal of the Sdd1 interface, or None when it is not worth a desktop notification
    (or malformed: wrong number of arguments)."""
    if member == DETECTION_RECEIVED and len(args) == 4:
        detection_id, type_, severity, file_path = (str(a) for a in args)
        if severity.lower() not in NOTIFY_SEVERITIES:
            return None
        what = clean(type_, 40) or "threat"
        summary = clean(f"sdd: {severity.lower()} {what} detected", MAX_SUMMARY)
        body = clean(file_path, MAX_BODY) or f"detection {clean(detection_id, 80)}"
        urgency = Urgency.CRITICAL if severity.lower() == "critical" else Urgency.NORMAL
        return Notice(summary, body, urgency, icon="dialog-warning", category="device")
    if member == RUN_FINISHED and len(args) == 4:
        run_id, workflow_id, status, seconds = args
        status = str(status)
        if status not in NOTIFY_RUN_STATUSES:
            return None
        workflow = clean(workflow_id, 60) or "workflow"
        summary = clean(f"sdd: {workflow} {_RUN_WORDS[status]}", MAX_SUMMARY)
        body = clean(f"Run {clean(run_id, 80)} {_RUN_WORDS[status]}{_seconds(seconds)}.", MAX_BODY)
        if status == "interrupted":
            body += " Its outcome is unknown: check `sddctl show`."
        urgency = Urgency.NORMAL if status == "rolled_back" else Urgency.CRITICAL
        return Notice(summary, body, urgency, icon="dialog-error", category="device.error")
    if member == NOTIFICATION and len(args) == 3:
        title, text, wanted = (str(a) for a in args)
        return Notice(
            clean(title, MAX_SUMMARY) or "sdd",
            clean(text, MAX_BODY),
            Urgency.from_name(wanted),
            icon="security-high",
            category="device",
        )
    return None
