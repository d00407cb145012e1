"""What sdd attaches to every run it starts (`engine.start(labels=...)`), and reads back from the run's events.

The engine carries the labels, read-only, in every event of the run and in its handle, so whoever needs to
know which detection a run serves (the history, the hub's events, log lines, the run log) reads it from the
run itself instead of from a map kept on the side. Label values are strings (the engine's rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

DETECTION_ID = "detection_id"   # sdd's id of the detection the run serves
EXTERNAL_ID = "external_id"     # the producer's own `id` of that detection, when it had one
TRIGGER = "trigger"             # a Trigger
UID = "uid"                     # who asked, for runs started through the API


class Trigger(StrEnum):
    DETECTION = "detection"
    API = "api"
    SCHEDULE = "schedule"


def run_labels(*, detection_id: str | None, external_id: str | None, trigger: Trigger,
               uid: int | None = None) -> dict[str, str]:
    """The labels of a run sdd starts: only what is known (an absent key reads as None)."""
    labels = {TRIGGER: trigger.value}
    if detection_id is not None:
        labels[DETECTION_ID] = detection_id
    if external_id is not None:
        labels[EXTERNAL_ID] = external_id
    if uid is not None:
        labels[UID] = str(uid)
    return labels


def label_uid(labels: Mapping[str, str]) -> int | None:
    value = labels.get(UID)
    return None if value is None else int(value)


def external_id(detection: Mapping[str, Any] | None) -> str | None:
    """The producer's id of a detection (its `id` field, a string or an integer), as text."""
    if detection is None:
        return None
    value = detection.get("id")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return value if isinstance(value, str) else str(value)


__all__ = ["DETECTION_ID", "EXTERNAL_ID", "TRIGGER", "UID", "Trigger", "external_id", "label_uid", "run_labels"]
