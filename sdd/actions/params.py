"""Parameter checking shared by every built-in action.

Step parameters come from workflow text rendered with detection data, so every value is hostile until
checked here. Each check raises `InvalidParams` naming the action, the parameter and what was wrong, so
a bad workflow or detection fails its step clearly (and without retries) instead of with a TypeError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from sdd.executor.paths import checked_abs_path

from .declarations import DECLARATIONS
from .errors import InvalidParams

MAX_PATH = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


class Params:
    """The parameters of one action call, checked against the action's declaration (`declarations.py`, the
    same table the workflow loader checks against): unknown names are refused, required ones must be given.
    The typed accessors below check each value as it is read."""

    def __init__(self, action: str, raw: Mapping[str, Any]) -> None:
        self.action = action
        self.raw = dict(raw)
        declared = DECLARATIONS.get(action, {})
        names = set(declared)
        unknown = sorted(set(self.raw) - names)
        if unknown:
            raise InvalidParams(
                f"{action}: unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(sorted(names))}")
        for name, spec in declared.items():
            if spec.get("required") and self.raw.get(name) is None:
                raise self.fail(name, "is required")

    def fail(self, name: str, message: str) -> InvalidParams:
        return InvalidParams(f"{self.action}: parameter {name!r}: {message}")

    def present(self, name: str) -> bool:
        return self.raw.get(name) is not None

    def string(self, name: str, *, required: bool = False, default: str | None = None,
               max_len: int = 65536, choices: Iterable[str] | None = None) -> str | None:
        value = self.raw.get(name)
        if value is None:
            if required:
                raise self.fail(name, "is required")
            return default
        if not isinstance(value, str):
            raise self.fail(name, f"expected a string, got {_kind(value)} {value!r:.80}")
        if "\x00" in value:
            raise self.fail(name, "contains a NUL byte")
        if len(value) > max_len:
            raise self.fail(name, f"is longer than {max_len} characters")
        if choices is not None:
            allowed = tuple(choices)
            if value not in allowed:
                raise self.fail(name, f"expected one of {', '.join(allowed)}, got {value!r:.80}")
        return value

    def req_string(self, name: str, **kw: Any) -> str:
        value = self.string(name, required=True, **kw)
        assert value is not None
        return value

    def number(self, name: str, *, default: float | None = None, minimum: float = 0.0,
               maximum: float = math.inf, required: bool = False) -> float | None:
        value = self.raw.get(name)
        if value is None:
            if required:
                raise self.fail(name, "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(name, f"expected a number, got {_kind(value)} {value!r:.80}")
        if not math.isfinite(value) or not minimum <= value <= maximum:
            raise self.fail(name, f"must be between {minimum:g} and {maximum:g}, got {value!r}")
        return float(value)

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.raw.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(name, f"expected true or false, got {_kind(value)} {value!r:.80}")
        return value

    def integer(self, name: str, *, required: bool = False, minimum: int = 0,
                maximum: int = 2**63 - 1) -> int | None:
        """An int, or a string of decimal digits (detections often carry numbers as strings)."""
        value = self.raw.get(name)
        if value is None:
            if required:
                raise self.fail(name, "is required")
            return None
        if isinstance(value, str) and re.fullmatch(r"[0-9]{1,19}", value.strip()):
            value = int(value.strip())
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"expected a whole number, got {_kind(value)} {value!r:.80}")
        if not minimum <= value <= maximum:
            raise self.fail(name, f"must be between {minimum} and {maximum}, got {value}")
        return value

    def abs_path(self, name: str, *, required: bool = True) -> str | None:
        value = self.string(name, required=required, max_len=MAX_PATH)
        if value is None:
            return None
        return checked_abs_path(value, self.fail, name)

    def str_map(self, name: str, *, key_pattern: str = r".+") -> dict[str, str]:
        value = self.raw.get(name)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(name, f"expected a mapping of strings, got {_kind(value)}")
        out: dict[str, str] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not re.fullmatch(key_pattern, key):
                raise self.fail(name, f"invalid name {key!r:.80}")
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise self.fail(name, f"value of {key!r} must be a string or number, got {_kind(item)}")
            text = str(item)
            if "\x00" in text:
                raise self.fail(name, f"value of {key!r} contains a NUL byte")
            out[key] = text
        return out

    def str_list(self, name: str, *, max_items: int = 1024) -> list[str]:
        value = self.raw.get(name)
        if value is None:
            return []
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise self.fail(name, f"expected a list, got {_kind(value)}")
        if len(value) > max_items:
            raise self.fail(name, f"has more than {max_items} items")
        out = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise self.fail(name, f"item {i} must be a string or number, got {_kind(item)}")
            text = str(item)
            if "\x00" in text:
                raise self.fail(name, f"item {i} contains a NUL byte")
            out.append(text)
        return out

    def sha256(self, name: str) -> str | None:
        value = self.string(name, max_len=64 + 7)
        if value is None:
            return None
        value = value.lower().removeprefix("sha256:")
        if not _HEX64.fullmatch(value):
            raise self.fail(name, f"expected 64 hexadecimal digits, got {value!r:.80}")
        return value


def plain(value: Any, depth: int = 0) -> Any:
    """Rendered values may be read-only mappings or tuples (a whole `{{ detection }}`): make them JSON data.
    Anything that is not JSON data is left as is, so json.dumps reports it."""
    if depth > 64:
        raise ValueError("nested more than 64 levels deep")
    if isinstance(value, Mapping):
        return {k: plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    return value
