"""How values cross into and out of SQLite: JSON columns with size and depth limits, text columns that are
always valid UTF-8, opaque page cursors, and timestamps.

Every value here may come from a hostile detection file, so nothing is trusted: a lone surrogate (legal in
JSON escapes, illegal in UTF-8), a NUL byte, a 100,000-deep nesting or a 50 MiB result must either be
stored in a form that reads back cleanly or be refused with an error naming the field.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any

from .errors import StoreValueError

# A detection file is at most 1 MiB (contract); raw JSON bigger than this cannot have come from the spool.
MAX_RAW_JSON = 4 * 1024 * 1024
# Step params/results, contexts and audit details: larger ones are kept as a truncated preview, because
# refusing an outcome record would lose the fact that the step ran.
MAX_DATA_JSON = 1024 * 1024
PREVIEW_CHARS = 4096
MAX_TEXT = 64 * 1024


class RawJSON(str):
    """Text already encoded by `dumps` (e.g. a workflow snapshot cached by the caller): stored as is."""


def dumps(value: Any, field: str, *, limit: int = MAX_DATA_JSON, truncate: bool = True) -> str | None:
    """Serialise `value` for a JSON column. Unserialisable or too deep → StoreValueError naming `field`;
    too large → a `{"truncated": true, ...}` marker when `truncate`, else StoreValueError."""
    if value is None:
        return None
    if isinstance(value, RawJSON):
        return str(value)
    try:
        # ensure_ascii keeps lone surrogates and NULs as \u escapes: the column is always valid UTF-8.
        text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=_default)
    except RecursionError:
        raise StoreValueError(f"{field}: nested too deeply to store") from None
    except (TypeError, ValueError) as exc:
        raise StoreValueError(f"{field}: not JSON-serialisable: {exc}") from None
    if len(text) > limit:
        if not truncate:
            raise StoreValueError(f"{field}: {len(text)} bytes of JSON, more than the {limit} allowed")
        return json.dumps({"truncated": True, "size": len(text), "preview": text[:PREVIEW_CHARS]})
    return text


def dumps_lenient(value: Any, field: str) -> str | None:
    """For outcome records (step results, final contexts): a value that cannot be stored becomes a marker
    saying why, because failing the write would lose the fact that the step ran."""
    try:
        return dumps(value, field)
    except StoreValueError as exc:
        return json.dumps({"unserialisable": str(exc)[:PREVIEW_CHARS]})


def _default(value: Any) -> Any:
    # Enums and paths are common in results; anything else is refused so nothing is silently mangled.
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "value") and isinstance(value.value, (str, int, float)):
        return value.value
    if hasattr(value, "__fspath__"):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def loads(text: str | None) -> Any:
    if text is None:
        return None
    return json.loads(text)


def text(value: Any, field: str, *, required: bool = False, limit: int = MAX_TEXT, clip: bool = False) -> str | None:
    """A value for a TEXT column: valid UTF-8 without NULs (escaped as backslash sequences), bounded: longer
    text is refused, or cut with a marker when `clip` (error messages must never fail their record)."""
    if value is None:
        if required:
            raise StoreValueError(f"{field}: required")
        return None
    if not isinstance(value, str):
        if required or isinstance(value, (dict, list)):
            raise StoreValueError(f"{field}: expected a string, got {type(value).__name__}")
        value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    if len(value) > limit:
        if clip:
            return value[:limit] + f"... [{len(value) - limit} more characters]"
        raise StoreValueError(f"{field}: {len(value)} characters, more than the {limit} allowed")
    return value


def opt_text(value: Any, field: str) -> str | None:
    """Like `text`, but a value of the wrong type (a number where a path was expected) becomes NULL: the raw
    JSON keeps it, the indexed column only holds what can be searched as text."""
    if value is None or not isinstance(value, str):
        return None
    return text(value, field)


def timestamp(value: Any, field: str, *, required: bool = False) -> float | None:
    if value is None:
        if required:
            raise StoreValueError(f"{field}: required")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StoreValueError(f"{field}: expected epoch seconds, got {value!r:.80}")
    return float(value)


def integer(value: Any, field: str, *, required: bool = False) -> int | None:
    if value is None:
        if required:
            raise StoreValueError(f"{field}: required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise StoreValueError(f"{field}: expected an integer, got {type(value).__name__}")
    if not -(2**63) <= value < 2**63:
        raise StoreValueError(f"{field}: integer out of range")
    return value


def row_id(value: Any, field: str) -> int:
    """Parse an id that is exposed as a string but stored as an integer key ("42" or 42)."""
    if isinstance(value, bool):
        raise StoreValueError(f"{field}: not an id: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        return int(value)
    raise StoreValueError(f"{field}: not an id: {value!r:.80}")


def encode_cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key), separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, shape: tuple[type, ...]) -> list[Any]:
    """Decode a cursor made by `encode_cursor`; anything else is an invalid_params-style error, never a crash."""
    if not isinstance(cursor, str) or len(cursor) > 1024:
        raise StoreValueError("cursor: invalid")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise StoreValueError("cursor: invalid") from None
    if not isinstance(key, list) or len(key) != len(shape):
        raise StoreValueError("cursor: invalid")
    for item, kind in zip(key, shape):
        ok = isinstance(item, (int, float)) and not isinstance(item, bool) if kind is float else (
            isinstance(item, kind) and not isinstance(item, bool))
        if not ok:
            raise StoreValueError("cursor: invalid")
    return key


__all__ = [
    "MAX_DATA_JSON",
    "MAX_RAW_JSON",
    "RawJSON",
    "decode_cursor",
    "dumps",
    "dumps_lenient",
    "encode_cursor",
    "integer",
    "loads",
    "opt_text",
    "row_id",
    "text",
    "timestamp",
]
