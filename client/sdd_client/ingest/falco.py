"""`--format falco`: Falco's JSON alerts (`json_output: true`), one per line, as `program_output` with
`keep_alive: true` writes them.

Falco's alert (userspace/engine/formats.cpp): `time` (ISO 8601, UTC, nanoseconds), `rule`, `priority`
(Emergency, Alert, Critical, Error, Warning, Notice, Informational, Debug), `source` (the event source,
e.g. syscall), `hostname`, and when enabled `output`, `tags`, `output_fields` (the rule's output fields by
name; a value Falco could not resolve is null). The mapping is the contract's (docs/sources.md):
`rule` → `threat_name`, `priority` → `severity`, `time` → `detected_at`, `hostname` → `host`, and from
`output_fields`: `proc.pid` → `process_id` (with `process_start_time` only when the process under that pid
is shown to be the one Falco saw), `proc.exepath` → `process_exe`, `fd.name` → `file_path` when it is an
absolute path, `user.name` → `user`, `container.id` → `container_id`. `type` is `falco`, or TYPE for a rule
tagged `sdd:TYPE`. The whole alert stays under `falco`; the `id` is derived from time, hostname, rule and
pid, so a replayed alert is a duplicate.
"""

from __future__ import annotations

import re

try:  # hashlib's own BLAKE2, without hashlib loading OpenSSL first (milliseconds of start-up)
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import blake2b

from .. import procstat
from .outcome import (
    BadLine,
    Detection,
    Rejected,
    absolute_path,
    clean_text,
    may_hold_surrogates,
    parse_json_line,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from .outcome import Outcome

SEVERITY = {"emergency": "critical", "alert": "critical", "critical": "critical", "error": "high",
            "warning": "medium"}  # everything else (Notice, Informational, Debug) is low
TYPE_TAG = "sdd:"
_TYPE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}")
_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})")
MAX_PID = 4194304  # the kernel's pid_max ceiling (2^22)


def iso_epoch(text: str) -> float | None:
    """Epoch seconds of an ISO 8601 time like Falco's `2026-11-25T10:00:00.123456789Z`; None if it is not."""
    m = _ISO.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    # Days from the civil date (Howard Hinnant's algorithm): no datetime/calendar import on the hot path.
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    seconds = days * 86400 + hour * 3600 + minute * 60 + second + float(m.group(7) or 0)
    zone = m.group(8)
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds


def _pid(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_PID else None


class FalcoAdapter:
    name = "falco"

    def __init__(self, verify_processes: bool = True) -> None:
        self.verify_processes = verify_processes

    def feed(self, lineno: int, line: bytes) -> Iterable[Outcome]:
        try:
            event = parse_json_line(line)
        except BadLine as exc:
            return [Rejected((lineno,), str(exc))]
        out = self.map(lineno, event)
        if isinstance(out, Detection) and not may_hold_surrogates(line):
            out.original = ("falco", line)  # the alert byte for byte
        return [out]

    def end(self) -> Iterable[Outcome]:
        return ()

    def map(self, lineno: int, event: Any) -> Outcome:
        if not isinstance(event, dict):
            return Rejected((lineno,), "not a Falco alert: expected a JSON object")
        rule, when = clean_text(event.get("rule"), 65536), event.get("time")
        if rule is None:
            return Rejected((lineno,), "not a Falco alert: 'rule' is missing or not a non-blank string")
        if not isinstance(when, str):
            return Rejected((lineno,), "not a Falco alert: 'time' is missing or not a string")
        warnings: list[str] = []
        kind = "falco"
        tags = event.get("tags")
        if isinstance(tags, list):
            for tag in tags:
                if isinstance(tag, str) and tag.startswith(TYPE_TAG):
                    name = tag[len(TYPE_TAG):]
                    if _TYPE_NAME.fullmatch(name):
                        kind = name
                        break
                    warnings.append(f"tag {tag!r:.80} does not name a detection type; type stays falco")
        elif tags is not None:
            warnings.append("'tags' is not a list: ignored")
        priority = event.get("priority")
        if not isinstance(priority, str):
            warnings.append("'priority' is missing or not a string: severity low")
            priority = ""
        detection: dict[str, Any] = {
            "type": kind, "source": "falco", "threat_name": rule,
            "severity": SEVERITY.get(priority.lower(), "low"), "detected_at": when,
        }
        hostname = event.get("hostname")
        host = clean_text(hostname, 255)
        if host is not None:
            detection["host"] = host
        elif hostname is not None:
            warnings.append("'hostname' is not a usable string: not mapped")
        fields = event.get("output_fields")
        pid = None
        if isinstance(fields, dict):
            pid = self._map_fields(fields, detection, iso_epoch(when), warnings)
        elif fields is not None:
            warnings.append("'output_fields' is not an object: no process or file mapped")
        key = "\n".join((when, host or "", rule, "" if pid is None else str(pid)))
        detection["id"] = "falco:" + blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
        detection["falco"] = event
        return Detection((lineno,), detection, warnings)

    def _map_fields(self, fields: dict[str, Any], detection: dict[str, Any], event_time: float | None,
                    warnings: list[str]) -> int | None:
        raw_pid = fields.get("proc.pid")
        pid = _pid(raw_pid)
        exe = absolute_path(fields.get("proc.exepath"))
        if pid is not None:
            detection["process_id"] = pid
            claimed = fields.get("proc.pid.ts")
            claimed_start = claimed / 1e9 if isinstance(claimed, int) and not isinstance(claimed, bool) else None
            started = procstat.identify(pid, event_time, claimed_start, exe) if self.verify_processes else None
            if started is not None:
                detection["process_start_time"] = started
            elif self.verify_processes:
                warnings.append(f"process {pid} is gone or is not the one Falco saw: no process_start_time")
        elif raw_pid is not None:
            warnings.append(f"output_fields.proc.pid is {_kind(raw_pid)}, not a pid: not mapped")
        if exe is not None:
            detection["process_exe"] = exe
        name = fields.get("fd.name")
        path = absolute_path(name)
        if path is not None:
            detection["file_path"] = path
        elif isinstance(name, str) and name.startswith("/"):
            warnings.append("output_fields.fd.name is not a usable path (NUL, U+FFFD or too long): not mapped")
        user = clean_text(fields.get("user.name"), 255)
        if user is not None:
            detection["user"] = user
        container = clean_text(fields.get("container.id"), 255)
        if container is not None and container != "host":
            detection["container_id"] = container
        return pid


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return f"the number {value!r:.40}"
    return "not a number"


__all__ = ["SEVERITY", "FalcoAdapter", "iso_epoch"]
