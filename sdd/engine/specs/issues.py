"""Where a validation problem is and how it is worded: `Marks` maps JSON paths to YAML line/column (built
by `parsing.py`), `format_path` writes a path as people read it, `did_you_mean` suggests the close name,
and `_Collector` gathers the issues of one document, each once, with its position.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import ValidationIssue

Path_ = tuple[Any, ...]


class Marks:
    """JSON path → (line, column), 1-based; `key` marks point at a mapping key, plain ones at values."""

    def __init__(self, values: dict[Path_, tuple[int, int]] | None = None,
                 keys: dict[Path_, tuple[int, int]] | None = None):
        self.values = values or {}
        self.keys = keys or {}

    def at(self, path: Path_, key: bool = False) -> tuple[int | None, int | None]:
        table = self.keys if key else self.values
        p = tuple(path)
        while True:
            if p in table:
                return table[p]
            if key and p in self.values:
                return self.values[p]
            if not p:
                return None, None
            p = p[:-1]


def format_path(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "empty (null)"
    return type(value).__name__


class _Collector:
    def __init__(self, source: str, marks: Marks):
        self.source, self.marks = source, marks
        self.issues: list[ValidationIssue] = []
        self._seen: set[tuple[Path_, str]] = set()

    def add(self, path: Sequence[Any], message: str, key: bool = False) -> None:
        path = tuple(path)
        if (path, message) in self._seen:
            return
        self._seen.add((path, message))
        line, col = self.marks.at(path, key=key)
        self.issues.append(ValidationIssue(self.source, line, col, format_path(path), message))


__all__ = ["Marks", "Path_", "did_you_mean", "format_path"]
