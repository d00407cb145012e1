"""`--format jsonl`: one detection object per line, exactly as a spool file holds it (docs/detections.md).

Each line is checked as the daemon checks a spool file (`sdd_client.detection.check`: UTF-8, JSON, a
non-blank `type`, the length and nesting limits), so a line the daemon would refuse is reported here, with
its number, instead of landing in `SPOOL/rejected/`.
"""

from __future__ import annotations

from .. import detection
from .outcome import Detection, Rejected

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .outcome import Outcome


class JsonlAdapter:
    name = "jsonl"

    def feed(self, lineno: int, line: bytes) -> Iterable[Outcome]:
        value, errors = detection.check(line)
        if errors:
            return [Rejected((lineno,), "; ".join(errors))]
        return [Detection((lineno,), value)]

    def end(self) -> Iterable[Outcome]:
        return ()


__all__ = ["JsonlAdapter"]
