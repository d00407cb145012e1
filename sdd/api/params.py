"""Parameter checking for API methods: every wrong or missing field gets an `invalid_params` naming it.

`Params(method, raw)` reads typed values one by one and `done()` refuses any field nobody asked for, so a
typo in a client (`limt`) is an error rather than a silently ignored option.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable
from typing import Any

from .errors import InvalidParams

MAX_ID_LEN = 256


class Params:
    def __init__(self, method: str, raw: dict[str, Any]) -> None:
        self.method = method
        self.raw = raw
        self._seen: set[str] = set()

    def _bad(self, name: str, message: str) -> InvalidParams:
        return InvalidParams(f"params.{name}: {message}")

    def present(self, name: str) -> bool:
        """Whether the caller gave `name` at all (a null counts as not given)."""
        self._seen.add(name)
        return self.raw.get(name) is not None

    def _get(self, name: str, aliases: Iterable[str] = ()) -> Any:
        for key in (name, *aliases):
            self._seen.add(key)
        for key in (name, *aliases):
            if key in self.raw and self.raw[key] is not None:
                return self.raw[key]
        return None

    def string(self, name: str, *, required: bool = False, default: str | None = None,
               max_len: int = MAX_ID_LEN, choices: Iterable[str] | None = None,
               aliases: Iterable[str] = ()) -> str | None:
        value = self._get(name, aliases)
        if value is None:
            if required:
                raise self._bad(name, "is required")
            return default
        if not isinstance(value, str):
            raise self._bad(name, f"expected a string, got {type(value).__name__}")
        if required and not value:
            raise self._bad(name, "must not be empty")
        if len(value) > max_len:
            raise self._bad(name, f"longer than {max_len} characters")
        if "\x00" in value:
            raise self._bad(name, "contains a NUL character")
        if choices is not None:
            allowed = tuple(choices)
            if value not in allowed:
                raise self._bad(name, f"expected one of {', '.join(allowed)}, got {value!r}")
        return value

    def required_string(self, name: str, **kw: Any) -> str:
        value = self.string(name, required=True, **kw)
        assert value is not None
        return value

    def integer(self, name: str, *, default: int, minimum: int, maximum: int) -> int:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._bad(name, f"expected an integer, got {type(value).__name__}")
        if not minimum <= value <= maximum:
            raise self._bad(name, f"must be between {minimum} and {maximum}, got {value}")
        return value

    def boolean(self, name: str, *, default: bool = False) -> bool:
        value = self.optional_boolean(name)
        return default if value is None else value

    def optional_boolean(self, name: str) -> bool | None:
        value = self._get(name)
        if value is not None and not isinstance(value, bool):
            raise self._bad(name, f"expected true or false, got {type(value).__name__}")
        return value

    def mapping(self, name: str, *, required: bool = False) -> dict[str, Any]:
        value = self._get(name)
        if value is None:
            if required:
                raise self._bad(name, "is required")
            return {}
        if not isinstance(value, dict):
            raise self._bad(name, f"expected a map, got {type(value).__name__}")
        return value

    def string_list(self, name: str, *, max_items: int = 100) -> list[str] | None:
        value = self._get(name)
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self._bad(name, "expected a list of non-empty strings")
        if len(value) > max_items:
            raise self._bad(name, f"more than {max_items} items")
        return value

    def timestamp(self, name: str) -> float | None:
        """Epoch seconds, or an ISO 8601 string (a naive one is taken as UTC)."""
        value = self._get(name)
        if value is None:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise self._bad(name, "must be a finite number of epoch seconds")
            return float(value)
        if isinstance(value, str) and len(value) <= 64:
            try:
                parsed = _dt.datetime.fromisoformat(value)  # 3.11 reads "Z" itself
            except ValueError:
                pass
            else:
                if parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=_dt.UTC)
                return parsed.timestamp()
        raise self._bad(name, f"expected epoch seconds or an ISO 8601 time, got {value!r:.80}")

    def done(self) -> None:
        extra = sorted(set(self.raw) - self._seen)
        if extra:
            raise InvalidParams(f"unknown parameter(s): {', '.join(map(str, extra))}")


__all__ = ["Params"]
