"""What an adapter makes of its input lines: a detection to write, a rejection to report, or input that is
no detection (a YARA-X file without matches). Every input line ends up in exactly one outcome, so a run can
account for each of them (the property tests check it)."""

from __future__ import annotations

from ..detection import parse_json
from ..spoolfile import MAX_DETECTION, SubmitError, encode_detection

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Outcome:
    __slots__ = ("lines",)
    lines: tuple[int, ...]  # the input line numbers it stands for


class Detection(Outcome):
    """A detection to write. `original` = (key, bytes): the producer's event exactly as it arrived, which
    `encode` puts under that key byte for byte instead of encoding `detection[key]` again (cheaper, and
    lossless); only for an event whose text holds no escape that could be a lone surrogate."""

    __slots__ = ("detection", "original", "warnings")

    def __init__(self, lines: tuple[int, ...], detection: dict[str, Any], warnings: list[str] | None = None,
                 original: tuple[str, bytes] | None = None) -> None:
        self.lines = lines
        self.detection = detection
        self.warnings = warnings or []
        self.original = original

    def encode(self) -> bytes:
        """The spool file's bytes; raises ClientError as spoolfile.encode_detection does."""
        if self.original is None:
            return encode_detection(self.detection)
        key, raw = self.original
        head = encode_detection({k: v for k, v in self.detection.items() if k != key})
        data = b"".join((head[:-1], b',"', key.encode(), b'":', raw, b"}"))
        if len(data) > MAX_DETECTION:
            raise SubmitError(f"detection is {len(data)} bytes; the spool accepts at most {MAX_DETECTION}")
        return data


class Rejected(Outcome):
    __slots__ = ("reason",)

    def __init__(self, lines: tuple[int, ...], reason: str) -> None:
        self.lines = lines
        self.reason = reason


class Ignored(Outcome):
    __slots__ = ("reason",)

    def __init__(self, lines: tuple[int, ...], reason: str) -> None:
        self.lines = lines
        self.reason = reason


def where(lines: tuple[int, ...]) -> str:
    if not lines:
        return "input"
    if len(lines) == 1:
        return f"line {lines[0]}"
    return f"lines {lines[0]}-{lines[-1]}"


class BadLine(ValueError):
    """A line that is not what its format says; the message says why."""


def may_hold_surrogates(line: bytes) -> bool:
    return b"\\ud" in line or b"\\uD" in line


def parse_json_line(line: bytes) -> Any:
    """One line as JSON: strict UTF-8, no NaN/Infinity; raises BadLine naming the problem."""
    try:
        return parse_json(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadLine(f"not valid UTF-8 (byte {exc.start})") from None
    except ValueError as exc:
        raise BadLine(str(exc)) from None


def clean_text(value: Any, limit: int = 4096) -> str | None:
    """A producer's string for a well-known text field: a non-blank string without NUL, bounded; else None."""
    if not isinstance(value, str) or not value.strip() or "\x00" in value or len(value) > limit:
        return None
    return value


def absolute_path(value: Any) -> str | None:
    """A file path a producer names: absolute, no NUL, no U+FFFD (a name the producer could not represent
    and replaced: it would name another file, or none), at most 4096 characters; else None."""
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value or "\ufffd" in value:
        return None
    return value if len(value) <= 4096 else None


__all__ = ["BadLine", "Detection", "Ignored", "Outcome", "Rejected", "absolute_path", "clean_text",
           "may_hold_surrogates", "parse_json_line", "where"]
