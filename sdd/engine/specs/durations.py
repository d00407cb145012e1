"""Durations in workflows: seconds as a number or a string like "90", "30s", "5m", "6h", "1d", "1h30m"."""

from __future__ import annotations

import re
from typing import Any

# The shortest period a schedule may have: `every: 1ms` (for 1m) would start a thousand runs a second.
MIN_SCHEDULE_EVERY = 1.0

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like "90", "30s", "5m", "6h", "1d", "1h30m"."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")  # noqa: TRY004 - callers catch ValueError
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if text[pos:m.start()].strip():
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or text[pos:].strip():
        raise ValueError(f"not a duration: {value!r} (use seconds or e.g. 30s, 5m, 6h, 1d)")
    return total


__all__ = ["MIN_SCHEDULE_EVERY", "parse_duration"]
