"""Checking and normalising the values every write takes (statuses, hashes, paths, actors, detection
references): shared by the history writes (`writes.py`) and the ledger writes (`ledger.py`)."""

from __future__ import annotations

import os
import re
from enum import Enum
from typing import Any

from . import codec
from .errors import StoreValueError

SHA256 = re.compile(r"[0-9a-f]{64}")


def or_default(value: float | None, default: float) -> float:
    return default if value is None else value


def enum_value(kind: type[Enum], value: Any, field: str) -> str:
    if type(value) is kind:  # the common case: already a member (the engine's and the daemon's statuses)
        return str(value.value)
    try:
        return str(kind(value).value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise StoreValueError(f"{field}: {value!r:.60} is not one of {allowed}") from None


def sha256_value(value: Any, field: str = "sha256") -> str:
    if not isinstance(value, str) or not SHA256.fullmatch(value.lower()):
        raise StoreValueError(f"{field}: expected 64 hexadecimal digits")
    return value.lower()


def path_value(value: Any, field: str) -> str:
    """An absolute path in canonical spelling (no '.', '..' or doubled or trailing slashes)."""
    text = codec.text(value, field, required=True)
    assert text is not None
    if not text.startswith("/"):
        raise StoreValueError(f"{field}: expected an absolute path")
    norm = os.path.normpath(text)
    return "/" + norm.lstrip("/") if norm.startswith("//") else norm


def actor_value(actor: Any) -> str:
    """uids become "uid:N"; strings ("detection:ID", "run:ID", "sdd") are kept."""
    if isinstance(actor, int) and not isinstance(actor, bool):
        return f"uid:{actor}"
    if actor is None:
        return "sdd"
    value = codec.text(actor, "actor", required=True, limit=256)
    assert value is not None
    return value


def detection_ref(value: Any) -> int | None:
    """A detection id for a foreign-key column; ids that are not ours (an external id) become NULL."""
    if value is None:
        return None
    try:
        return codec.row_id(value, "detection_id")
    except StoreValueError:
        return None
