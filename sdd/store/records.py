"""Small value types the store hands across module lines: states, kinds, pages."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class DetectionState(str, Enum):
    """What became of a detection (internals.md "Store")."""

    QUEUED = "queued"          # committed, waiting to be matched (back-pressure keeps them here, not in memory)
    MATCHED = "matched"        # at least one run was started for it
    NO_MATCH = "no_match"
    DUPLICATE = "duplicate"
    EXCLUDED = "excluded"
    REJECTED = "rejected"

    def __str__(self) -> str:
        return self.value


class RunTrigger(str, Enum):
    """Why a run exists."""

    DETECTION = "detection"
    API = "api"
    SCHEDULE = "schedule"

    def __str__(self) -> str:
        return self.value


class ExclusionKind(str, Enum):
    SHA256 = "sha256"
    PATH = "path"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a keyset-paginated list: `cursor` is None on the last page, else pass it back verbatim."""

    items: list[dict[str, Any]] = field(default_factory=list)
    cursor: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "cursor": self.cursor}


@dataclass(frozen=True, slots=True)
class AddedDetection:
    """Outcome of `Store.record_detection`.

    `replayed`: the same spool file (same name, same content) was committed before — a crash between commit
    and unlink — and the existing row is returned unchanged. `duplicate_of`: the detection's external `id` was already known; the new row
    was stored with state `duplicate` pointing at the first one.
    """

    detection_id: str
    state: DetectionState
    duplicate_of: str | None = None
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters of the group-commit writer (for tests, benchmarks and `status`)."""

    transactions: int
    operations: int
    failed_operations: int
    queued: int
    largest_batch: int
    full_since: float | None = None  # (wall clock) commits fail for a full disk and are being tried again


__all__ = ["AddedDetection", "DetectionState", "ExclusionKind", "Page", "RunTrigger", "WriterStats"]
