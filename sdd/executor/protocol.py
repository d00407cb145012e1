"""The executor's wire: one typed request per primitive, checked field by field; nothing else is accepted.

Frames are the socket API's (`client/sdd_client/protocol.py`: 4-byte length + one msgpack map), with a
smaller bound (`MAX_FRAME`) and depth. Messages, all tagged with the request's `id`:

- daemon → executor: `{"id", "op", "args", "confirm"}` (a request; `confirm: false` = no `ready` wanted), `{"id", "go": bool}` (the answer to `ready`),
  `{"id", "abort": true}` (the step was cancelled: stop before the commit point if not past it);
- executor → daemon: `{"id", "ready": true}` (checks passed, about to act: the daemon takes its rate limit
  now, so a refused request never uses it up), then `{"id", "result": map}`, `{"id", "aborted": true}` or
  `{"id", "error": {"code", "message", "retryable", "details"}}`.

`parse_request` is the executor's first line of defence: unknown ops and unknown fields are refused, every
field has one type (a bool is not an int), strings and lists have bounds. The primitives check meaning
(roots, symlinks, pids) themselves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from .errors import InvalidRequest

MAX_FRAME = 1024 * 1024   # run_script's stdin is the biggest field
MAX_DEPTH = 4
MAX_INFLIGHT = 64          # requests in flight on one connection; the client waits for a place beyond it
MAX_PATH = 4096
MAX_TEXT = 512
MAX_HINTS = 16
MAX_ARGS = 256
MAX_ARG = 64 * 1024
MAX_ENV = 64
MAX_STDIN = 512 * 1024
QID_RE = re.compile(r"[0-9a-f]{32}")
ON_CONFLICT = ("fail", "rename", "overwrite")


@dataclass(frozen=True)
class Quarantine:
    op = "quarantine"
    path: str
    detection_id: str | None = None
    threat_name: str | None = None
    run_id: str | None = None
    hints: tuple[str, ...] = ()


@dataclass(frozen=True)
class Restore:
    op = "restore"
    quarantine_id: str
    on_conflict: str = "fail"
    force: bool = False


@dataclass(frozen=True)
class Lookup:
    """What the vault holds for an id, or the newest item of a path (`state` "quarantined" first)."""

    op = "lookup"
    quarantine_id: str | None = None
    path: str | None = None
    hints: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delete:
    op = "delete"
    path: str


@dataclass(frozen=True)
class Kill:
    op = "kill"
    pid: int | None = None
    start_time: float | None = None
    file_path: str | None = None
    quarantine_id: str | None = None
    run_id: str | None = None
    hints: tuple[str, ...] = ()
    trust: bool = False
    include_children: bool = False
    grace: float = 5.0
    dry_run: bool = False


@dataclass(frozen=True)
class RunScript:
    """Not idempotent: an executor lost while it runs leaves the outcome unknown (never retried by itself)."""

    op = "run_script"
    idempotent = False
    script: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    stdin: str | None = None
    timeout: float = 60.0


@dataclass(frozen=True)
class Scan:
    """Scan a file or tree with the executor's configured scanner (`clamav`) or its YARA rules (`yara`)."""

    op = "scan"
    path: str
    engine: str = "clamav"
    timeout: float = 3600.0
    max_file_size: int | None = None


Request = Quarantine | Restore | Lookup | Delete | Kill | RunScript | Scan
OPS: dict[str, type[Any]] = {c.op: c for c in (Quarantine, Restore, Lookup, Delete, Kill, RunScript, Scan)}
ENGINES = ("clamav", "yara")

# field → (accepted types, check); `None` is accepted exactly where the dataclass default is None.
_TYPES: dict[str, tuple[type, ...]] = {
    "path": (str,), "file_path": (str,), "detection_id": (str,), "threat_name": (str,), "run_id": (str,),
    "quarantine_id": (str,), "on_conflict": (str,), "hints": (list, tuple), "force": (bool,), "trust": (bool,),
    "include_children": (bool,), "dry_run": (bool,), "pid": (int,), "start_time": (int, float),
    "grace": (int, float), "script": (str,), "args": (list, tuple), "env": (dict,), "stdin": (str,),
    "timeout": (int, float), "engine": (str,), "max_file_size": (int,)}


def _fail(op: str, name: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"executor: {op}.{name}: {why}")


def _check_field(op: str, name: str, value: Any) -> Any:
    types = _TYPES[name]
    if isinstance(value, bool) and bool not in types:
        raise _fail(op, name, "expected " + "/".join(t.__name__ for t in types) + ", got bool")
    if not any(isinstance(value, t) for t in types):  # no narrowing: value stays Any
        raise _fail(op, name, "expected " + "/".join(t.__name__ for t in types) + f", got {type(value).__name__}")
    if isinstance(value, str):
        limit = {"path": MAX_PATH, "file_path": MAX_PATH, "script": MAX_PATH, "stdin": MAX_STDIN}.get(name, MAX_TEXT)
        if len(value) > limit:
            raise _fail(op, name, f"longer than {limit} characters")
        if "\0" in value:
            raise _fail(op, name, "contains a NUL character")
        if name == "quarantine_id" and not QID_RE.fullmatch(value):
            raise _fail(op, name, f"expected 32 hexadecimal digits, got {value!r:.80}")
        if name == "engine" and value not in ENGINES:
            raise _fail(op, name, f"expected one of {', '.join(ENGINES)}, got {value!r:.80}")
        if name == "on_conflict" and value not in ON_CONFLICT:
            raise _fail(op, name, f"expected one of {', '.join(ON_CONFLICT)}, got {value!r:.80}")
    if name == "hints":
        if len(value) > MAX_HINTS or not all(isinstance(h, str) and QID_RE.fullmatch(h) for h in value):
            raise _fail(op, name, f"expected at most {MAX_HINTS} quarantine ids")
        return tuple(value)
    if name == "args":
        if len(value) > MAX_ARGS or not all(isinstance(a, str) and len(a) <= MAX_ARG and "\0" not in a
                                            for a in value):
            raise _fail(op, name, f"expected at most {MAX_ARGS} strings of at most {MAX_ARG} characters")
        return tuple(value)
    if name == "env":
        if len(value) > MAX_ENV or not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 128
                                           and len(v) <= MAX_ARG and "\0" not in k + v for k, v in value.items()):
            raise _fail(op, name, f"expected at most {MAX_ENV} string names and values")
        return dict(value)
    if name == "max_file_size" and not 1 <= value <= 1 << 40:
        raise _fail(op, name, f"out of range: {value}")
    if name == "pid" and not 1 <= value <= 2**22:
        raise _fail(op, name, f"out of range: {value}")
    if name in ("start_time", "grace", "timeout"):
        value = float(value)
        if (not math.isfinite(value) or value < 0 or (name == "grace" and value > 300)
                or (name == "timeout" and not 0.1 <= value <= 86400)):
            raise _fail(op, name, f"out of range: {value}")
    return value


def wants_confirmation(message: Mapping[str, Any]) -> bool:
    """Whether the daemon asked to be asked (`ready`) before the act: it has a rate limit to take."""
    return message.get("confirm") is not False


def parse_request(message: Mapping[str, Any]) -> tuple[int, Request]:
    """(id, the typed request) of one incoming message; InvalidRequest naming the first problem."""
    rid = message.get("id")
    if not isinstance(rid, int) or isinstance(rid, bool) or not 0 < rid < 2**53:
        raise InvalidRequest("executor: id must be a positive integer")
    extra = set(message) - {"id", "op", "args", "confirm"}
    if extra:
        raise InvalidRequest(f"executor: unknown message field(s): {', '.join(sorted(map(str, extra)))[:200]}")
    op = message.get("op")
    cls = OPS.get(op) if isinstance(op, str) else None
    if cls is None or not isinstance(op, str):
        raise InvalidRequest(f"executor: unknown op {op!r:.60}; one of {', '.join(OPS)}")
    args = message.get("args")
    if "confirm" in message and not isinstance(message["confirm"], bool):
        raise InvalidRequest("executor: confirm must be a boolean")
    if not isinstance(args, Mapping):
        raise InvalidRequest(f"executor: {op}: args must be a map")
    known = {f.name: f for f in fields(cls)}
    unknown = [k for k in args if k not in known]
    if unknown:
        raise InvalidRequest(f"executor: {op}: unknown field(s): {', '.join(sorted(map(str, unknown)))[:200]}")
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name not in args:
            if f.default is MISSING and f.default_factory is MISSING:
                raise _fail(op, name, "required")
            continue
        value = args[name]
        if value is None and f.default is None:
            values[name] = None
            continue
        values[name] = _check_field(op, name, value)
    return rid, cls(**values)


def idempotent(req: Request) -> bool:
    return bool(getattr(req, "idempotent", True))


def request_message(rid: int, req: Request, confirm: bool = True) -> dict[str, Any]:
    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(req).items()}
    return {"id": rid, "op": req.op, "args": args, "confirm": confirm}


def error_message(rid: int, code: str, message: str, retryable: bool, details: Mapping[str, Any] | None = None,
                  committed: bool = False) -> dict[str, Any]:
    return {"id": rid, "error": {"code": code, "message": message[:2000], "retryable": retryable,
                                 "details": dict(details or {}), "committed": committed}}


__all__ = ["MAX_FRAME", "OPS", "Delete", "Kill", "Lookup", "Quarantine", "Request", "Restore", "RunScript",
           "Scan", "error_message", "idempotent", "parse_request", "request_message"]
