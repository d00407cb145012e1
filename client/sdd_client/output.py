"""Human output for sddctl: aligned tables, relative times, durations, and colour only where it belongs.

Colour is used only when stdout is a terminal, `TERM` is not `dumb`, and `NO_COLOR` is unset or empty
(https://no-color.org). Every function here is pure: it returns strings, the caller prints them.
"""

from __future__ import annotations

import os
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

_CODES = {"red": "31", "green": "32", "yellow": "33", "blue": "34", "magenta": "35", "cyan": "36",
          "grey": "90", "bold": "1", "dim": "2"}

STATUS_COLOURS = {
    "completed": "green", "running": "cyan", "pending": "cyan", "failed": "red", "rolled_back": "yellow",
    "cancelled": "grey", "interrupted": "magenta", "waiting": "yellow", "skipped": "grey", "ok": "green",
    "error": "red",
    "matched": "green", "queued": "cyan", "no_match": "grey", "duplicate": "grey", "excluded": "grey",
    "rejected": "red", "starting": "yellow", "stopping": "yellow", "lagged": "yellow",
}
STATUS_MARKS = {"completed": "✓", "failed": "✗", "rolled_back": "↺", "skipped": "-", "cancelled": "⊘",
                "interrupted": "!", "running": "…", "pending": "·", "waiting": "⧗"}


def colour_enabled(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass(frozen=True)
class Style:
    colour: bool = False

    def paint(self, text: str, *names: str) -> str:
        if not self.colour or not names:
            return text
        codes = ";".join(_CODES[n] for n in names if n in _CODES)
        return f"\x1b[{codes}m{text}\x1b[0m" if codes else text

    def status(self, status: Any) -> str:
        text = "-" if status is None else str(status)
        return self.paint(text, STATUS_COLOURS.get(text, ""))

    def bold(self, text: str) -> str:
        return self.paint(text, "bold")


def visible_width(text: str) -> int:
    """Terminal columns taken by text, ignoring colour escapes and counting wide characters as two."""
    width = 0
    in_escape = False
    for ch in text:
        if in_escape:
            in_escape = ch != "m"
            continue
        if ch == "\x1b":
            in_escape = True
            continue
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def safe(value: Any, limit: int = 200) -> str:
    """A value as one line of printable text: control characters from hostile data never reach the
    terminal (a file name could otherwise carry escape sequences)."""
    text = "-" if value is None else str(value)
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], style: Style = Style()) -> list[str]:
    """Left-aligned columns separated by two spaces, like `systemctl list-units`; the last column is not
    padded. Cells may already carry colour."""
    rows = [list(r) for r in rows]
    widths = [visible_width(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], visible_width(cell))

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            pad = "" if i == len(cells) - 1 else " " * (widths[i] - visible_width(cell))
            out.append(cell + pad)
        return "  ".join(out).rstrip()

    return [style.bold(line(list(headers)))] + [line(r) for r in rows]


def relative_time(ts: Any, now: float | None = None) -> str:
    """'just now', '42 s ago', '3 min ago', '5 h ago', '2 days ago', or 'in 4 min' for the future."""
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return "-"
    now = time.time() if now is None else now
    delta = now - ts
    future = delta < 0
    delta = abs(delta)
    if delta < 2:
        return "just now"
    if delta < 60:
        text = f"{int(delta)} s"
    elif delta < 3600:
        text = f"{int(delta // 60)} min"
    elif delta < 86400:
        text = f"{int(delta // 3600)} h"
    elif delta < 86400 * 60:
        days = int(delta // 86400)
        text = f"{days} day" + ("s" if days != 1 else "")
    else:
        return time.strftime("%Y-%m-%d", time.localtime(ts))
    return f"in {text}" if future else f"{text} ago"


def duration(seconds: Any) -> str:
    """'0.12s', '4.5s', '3min 07s', '2h 05min' (systemd-like)."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}min {int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60):02d}min"
    return f"{int(seconds // 86400)}d {int(seconds % 86400 // 3600)}h"


def clock(ts: Any) -> str:
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def key_values(pairs: Iterable[tuple[str, str]], indent: str = "  ") -> list[str]:
    """`Key: value` lines with the values aligned, like `systemctl status`."""
    pairs = list(pairs)
    width = max((len(k) for k, _ in pairs), default=0)
    return [f"{indent}{k + ':':<{width + 1}} {v}" for k, v in pairs]


def compact(value: Any, limit: int = 120) -> str:
    """A short one-line rendering of a nested value (for status sub-maps and step results)."""
    if isinstance(value, dict):
        text = ", ".join(f"{k}={compact(v, 40)}" for k, v in value.items())
    elif isinstance(value, list):
        text = ", ".join(compact(v, 40) for v in value)
    else:
        text = "-" if value is None else str(value)
    return safe(text, limit)


__all__ = [
    "STATUS_MARKS",
    "Style",
    "clock",
    "colour_enabled",
    "compact",
    "duration",
    "key_values",
    "relative_time",
    "safe",
    "table",
    "visible_width",
]
