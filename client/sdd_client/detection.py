"""The detection model on the client side: is this one spool file the daemon will take?

`detection.schema.json`, shipped beside this module, is the published JSON Schema of a spool file: its root
is exactly what the daemon accepts, `#/$defs/strict` adds the types the shipped workflows and built-in
actions expect of the well-known fields. `check(raw)` applies what JSON Schema cannot say (UTF-8, size,
nesting, NaN, lone surrogates, integer ids written as integers, limits counted on the stored form) and then
the schema; `problems(obj)` checks an object already parsed (what the adapters of `sdd-ingest` build).

The schema is read by a small interpreter of exactly the keywords it uses (an unknown keyword is an error at
load time, so the file can never say more than is checked), because the client must install without the
daemon's dependencies. The tests check the file with the `jsonschema` library too, and check that this
module and the daemon's parser (`sdd/intake/spool.py` + the store's limits) accept and refuse the same files.
"""

from __future__ import annotations

import json
import os
import re

TYPE_CHECKING = False  # typing costs milliseconds at start-up (sdd-ingest imports this module)
if TYPE_CHECKING:
    from typing import Any

MAX_FILE_SIZE = 1024 * 1024  # the daemon's default `[intake] max_file_size`
MAX_NESTING = 64  # as sdd/intake/spool.py
SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "detection.schema.json")
STRICT = "#/$defs/strict"

_ANNOTATIONS = {"$schema", "$id", "title", "description", "$comment", "$defs", "examples"}
_KEYWORDS = _ANNOTATIONS | {"type", "required", "properties", "items", "maxLength", "pattern", "minimum",
                            "maximum", "enum", "$ref", "allOf"}
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_NOT_A_NAME_BYTE = re.compile("[\ud800-\udc7f\udd00-\udfff]")
_TYPE_NAME = {"string": "a string", "integer": "an integer", "number": "a number", "object": "an object",
              "array": "an array", "boolean": "a boolean", "null": "null"}
_JSON_TYPE = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
              int: "an integer", float: "a number"}


class SchemaError(Exception):
    """detection.schema.json uses something this interpreter does not check (a packaging defect)."""


def describe(value: Any) -> str:
    return _JSON_TYPE.get(type(value), type(value).__name__)


def _matches_type(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":  # an int as json.loads gives it: never a bool, never 1.0 (the daemon refuses both)
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    raise SchemaError(f"unknown type {kind!r}")


def _stored_length(text: str) -> int:
    """The length the store counts (sdd/store/codec.py): NUL as `\\x00`, a lone surrogate as `\\udcXX`."""
    if text.isascii() and "\x00" not in text:
        return len(text)
    extra = 3 * text.count("\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        extra += 5 * sum(1 for c in text if "\ud800" <= c <= "\udfff")
    return len(text) + extra


class Schema:
    """detection.schema.json, compiled: `errors(value, pointer)` lists what is wrong, naming each field."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self._patterns: dict[str, re.Pattern[str]] = {}
        self._check_keywords(document, "#")

    def _check_keywords(self, node: Any, where: str) -> None:
        if not isinstance(node, dict):
            raise SchemaError(f"{where}: a schema must be an object")
        unknown = set(node) - _KEYWORDS
        if unknown:
            raise SchemaError(f"{where}: keyword(s) {sorted(unknown)} are not checked by sdd_client.detection")
        for key in ("properties", "$defs"):
            for name, sub in node.get(key, {}).items():
                self._check_keywords(sub, f"{where}/{key}/{name}")
        for i, sub in enumerate(node.get("allOf", [])):
            self._check_keywords(sub, f"{where}/allOf/{i}")
        if "items" in node:
            self._check_keywords(node["items"], f"{where}/items")
        if "pattern" in node:
            self._patterns[node["pattern"]] = re.compile(node["pattern"])

    def resolve(self, ref: str) -> dict[str, Any]:
        if ref == "#":
            return self.document
        if not ref.startswith("#/"):
            raise SchemaError(f"only local references are supported, not {ref!r}")
        node: Any = self.document
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node  # type: ignore[no-any-return]

    def errors(self, value: Any, ref: str = "#") -> list[str]:
        out: list[str] = []
        self._validate(self.resolve(ref), value, "", out)
        return out

    def _validate(self, node: dict[str, Any], value: Any, field: str, out: list[str]) -> None:
        name = _Name(field)
        if "$ref" in node:
            self._validate(self.resolve(node["$ref"]), value, field, out)
        for sub in node.get("allOf", ()):
            self._validate(sub, value, field, out)
        kinds = node.get("type")
        if kinds is not None:
            kinds = [kinds] if isinstance(kinds, str) else kinds
            if not any(_matches_type(value, k) for k in kinds):
                names = [_TYPE_NAME[k] for k in kinds]
                wanted = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
                out.append(f"{name}: expected {wanted}, got {describe(value)}")
                return
        if "enum" in node and value not in node["enum"]:
            out.append(f"{name}: {value!r:.80} is not one of {', '.join(map(str, node['enum']))}")
        if isinstance(value, str):
            if "maxLength" in node and _stored_length(value) > node["maxLength"]:
                out.append(f"{name}: longer than {node['maxLength']} characters")
            if "pattern" in node and not self._patterns[node["pattern"]].search(value):
                out.append(f"{name}: {value!r:.80} is not {_pattern_meaning(node['pattern'])}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in node and value < node["minimum"]:
                out.append(f"{name}: {value} is less than {node['minimum']}")
            if "maximum" in node and value > node["maximum"]:
                out.append(f"{name}: {value} is more than {node['maximum']}")
        elif isinstance(value, dict):
            for key in node.get("required", ()):
                if key not in value:
                    out.append(f"field '{_join(field, key)}': required")
            for key, sub in node.get("properties", {}).items():
                if key in value:
                    self._validate(sub, value[key], _join(field, key), out)
        elif isinstance(value, list) and "items" in node:
            for i, item in enumerate(value):
                self._validate(node["items"], item, f"{field}[{i}]", out)


class _Name:
    """How an error names the field; made into text only when there is an error (the common case has none)."""

    __slots__ = ("field",)

    def __init__(self, field: str) -> None:
        self.field = field

    def __format__(self, spec: str) -> str:
        return f"field '{self.field}'" if self.field else "the detection"


def _join(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def _pattern_meaning(pattern: str) -> str:
    if pattern.startswith("[^\\t"):
        return "a non-blank string"
    if pattern.startswith("^[0-9]{4}"):
        return "an ISO 8601 time such as 2026-11-25T10:00:00Z"
    return {"^/[^\\u0000]*$": "an absolute path (without NUL)",
            "^[0-9a-fA-F]{64}$": "64 hexadecimal digits"}.get(pattern, f"matching the pattern {pattern}")


_schema: Schema | None = None


def schema() -> Schema:
    global _schema
    if _schema is None:
        with open(SCHEMA_FILE, encoding="utf-8") as fh:
            _schema = Schema(json.load(fh))
    return _schema


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def finite_float(text: str) -> float:
    """`parse_float` for JSON from outside: a number too large for a double (`1e999`, which Python would turn
    into infinity) is refused like NaN, with the number in the reason."""
    value = float(text)
    if value in (_INF, -_INF):
        raise ValueError(f"number {text[:40]}{'…' if len(text) > 40 else ''} is out of range (not a finite "
                         "double)")
    return value


_INF = float("inf")
_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=finite_float)  # json.loads would build one per call


def parse_json(text: str) -> Any:
    """Strict JSON (no NaN or Infinity); raises ValueError whose message says what is wrong and where."""
    try:
        return _decoder.decode(text)
    except RecursionError:
        raise ValueError("invalid JSON: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate anywhere in `value` that is not a file-name byte (U+DC80..U+DCFF), as U+XXXX."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found = _NOT_A_NAME_BYTE.search(item)
            if found is not None:
                return f"U+{ord(found.group()):04X}"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _id_problem(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and len(str(value)) > 1024:
        return "field 'id': an integer of more than 1024 digits"
    return None


def _problems(value: Any, strict: bool, deep: bool, surrogates: bool) -> list[str]:
    if not isinstance(value, dict):
        return [f"the detection: expected one JSON object, got {describe(value)}"]
    out = schema().errors(value, STRICT if strict else "#")
    ident = _id_problem(value.get("id"))
    if ident:
        out.append(ident)
    if deep and too_deep(value):
        out.append(f"the detection: JSON nested deeper than {MAX_NESTING} levels")
    bad = lone_surrogate(value) if surrogates else None
    if bad:
        out.append(f"the detection: invalid Unicode (lone surrogate {bad}, not a file-name byte)")
    return out


def problems(value: Any, *, strict: bool = False, deep: bool = True, surrogates: bool = True) -> list[str]:
    """What keeps a parsed detection out of the daemon (or, `strict`, out of the typed profile). A caller
    that knows the value cannot nest too deeply, or holds no lone surrogate (its encoding succeeded), may
    skip those walks."""
    return _problems(value, strict, deep, surrogates)


def check(raw: bytes, *, strict: bool = False, max_size: int = MAX_FILE_SIZE) -> tuple[Any, list[str]]:
    """One spool file's bytes: (the parsed object or None, what is wrong with it — empty when it is good)."""
    if len(raw) > max_size:
        return None, [f"too large: {len(raw)} bytes (limit {max_size})"]
    if not raw.strip():
        return None, ["empty"]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [f"not valid UTF-8 (byte {exc.start})"]
    try:
        value = parse_json(text)
    except ValueError as exc:
        return None, [str(exc)]
    # The walks are needed only when the text could hold what they look for (the common case skips both).
    deep = text.count("[") + text.count("{") > MAX_NESTING
    surrogates = "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None
    return value, _problems(value, strict, deep, surrogates)


__all__ = ["MAX_FILE_SIZE", "MAX_NESTING", "SCHEMA_FILE", "STRICT", "Schema", "SchemaError", "check",
           "describe", "lone_surrogate", "parse_json", "problems", "schema", "too_deep"]
