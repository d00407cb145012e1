"""Structured log records: one line per record, `key=value` pairs (logfmt), that journald keeps whole.

Use `log.info("claimed", extra=kv(name=..., n=3))` to attach fields. When stderr is connected to the journal
(`$JOURNAL_STREAM`), each line starts with the syslog priority prefix (`<3>`) that journald turns into the
entry's priority. Multi-line text (tracebacks, messages quoting input) is escaped so it stays one line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class LogEvent(StrEnum):
    """The kinds of record a fleet watches for: `kv(event=LogEvent.RUN_FINISHED, ...)`. Each has a fixed journal
    MESSAGE_ID (`sdd/logging/journal.py`), so `journalctl MESSAGE_ID=...` finds them on every host."""

    DETECTION_ACCEPTED = "detection.accepted"
    RUN_FINISHED = "run.finished"
    STEP_FAILED = "step.failed"
    QUARANTINED = "quarantined"
    RESTORED = "restored"
    GUARD_REFUSED = "guard.refused"
    GUARD_TRIPPED = "guard.tripped"


def kv(**fields: Any) -> dict[str, Mapping[str, Any]]:
    """The `extra=` argument that attaches structured fields to one log record."""
    return {"sdd_fields": fields}


def _quote(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\\\n\r\t') and text.isprintable():
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    escaped = escaped.replace("\t", "\\t")
    # Anything else unprintable (input comes from hostile files) is shown as an escape, never raw.
    return '"' + "".join(c if c.isprintable() else repr(c)[1:-1] for c in escaped) + '"'


class LogfmtFormatter(logging.Formatter):
    """`level=info logger=sdd.intake msg="claimed" name=x` — with the journal priority prefix if asked."""

    def __init__(self, journal: bool = False, timestamps: bool = True) -> None:
        super().__init__()
        self.journal = journal
        self.timestamps = timestamps and not journal  # journald stamps entries itself

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.timestamps:
            t = record.created
            parts.append("ts=" + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z")
        parts.append("level=" + record.levelname.lower())
        parts.append("logger=" + record.name)
        parts.append("msg=" + _quote(record.getMessage()))
        fields = getattr(record, "sdd_fields", None)
        if fields:
            parts.extend(f"{k}={_quote(v)}" for k, v in fields.items())
        if record.exc_info:
            parts.append("exc=" + _quote(self.formatException(record.exc_info)))
        line = " ".join(parts)
        if self.journal:
            line = f"<{_PRIORITY.get(record.levelno, 6)}>" + line
        return line


def story(run_id: str | None = None, workflow: str | None = None, detection: str | None = None,
          **more: Any) -> dict[str, Mapping[str, Any]]:
    """`kv()` for the lines that tell what happened to a detection and its runs: each carries `run_id`,
    `workflow` and `detection` (sdd's id; `-` when there is none yet), so one grep follows one of them."""
    return {"sdd_fields": {"run_id": run_id or "-", "workflow": workflow or "-", "detection": detection or "-",
                           **more}}
