"""journald's native protocol: each log record as one datagram of `KEY=value` fields to the journal's socket.

Used when sdd runs under systemd (stderr is the journal stream named by `$JOURNAL_STREAM`) or when
`[logging] target = "journal"`. Every record carries `MESSAGE`, `PRIORITY`, `SYSLOG_IDENTIFIER=sdd`, the code
location, the logger (`SDD_LOGGER`), every structured field as `SDD_<KEY>` (`run_id` → `SDD_RUN_ID`,
`workflow` → `SDD_WORKFLOW`, `detection` → `SDD_DETECTION_ID`, `status` → `SDD_STATUS`) and, for the events a
fleet watches, a fixed `MESSAGE_ID` (see `MESSAGE_IDS`; `journalctl MESSAGE_ID=...`).

The wire format is systemd's (sd_journal_sendv): a field is `KEY=value\\n`, or, when the value holds a newline
or is not text, `KEY\\n` + its length as 64-bit little-endian + the bytes + `\\n`. A record too large for one
datagram goes in a sealed memfd passed with SCM_RIGHTS. Sending never blocks the daemon for long: a journal
that does not take a record within `SEND_TIMEOUT` costs that record (counted, and said in the next one that
goes through); a journal that is gone sends the record to stderr as logfmt instead.
"""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import re
import socket
import struct
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from .records import LogEvent, LogfmtFormatter

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SEND_TIMEOUT = 0.25
IDENTIFIER = "sdd"

# One fixed id per event kind, for `journalctl MESSAGE_ID=...` (and a catalog, should one be shipped).
MESSAGE_IDS: Mapping[str, str] = {
    LogEvent.DETECTION_ACCEPTED: "395668215e2744b290bf23ef2ff0fa3b",
    LogEvent.RUN_FINISHED: "9b82f232986c4b92a88789421cfe3732",
    LogEvent.STEP_FAILED: "95d1b199b4be4e5cb6ace288972d085e",
    LogEvent.QUARANTINED: "bec08415f69a45d6a18e981f9f0cf9f9",
    LogEvent.RESTORED: "5372ec379be7490b963096b9749d7bf4",
    LogEvent.GUARD_REFUSED: "9ede8063f0b4452c9c41b7717bc94936",
}
# Structured fields with the names a fleet's queries use; any other field `name` becomes SDD_NAME.
FIELD_NAMES: Mapping[str, str] = {"run_id": "SDD_RUN_ID", "workflow": "SDD_WORKFLOW", "workflow_id": "SDD_WORKFLOW",
                                  "detection": "SDD_DETECTION_ID", "detection_id": "SDD_DETECTION_ID",
                                  "status": "SDD_STATUS"}
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
_BAD_KEY = re.compile(r"[^A-Z0-9_]")


def connected_to_journal(env: Mapping[str, str] | None = None, stream: Any = None) -> bool:
    """True when stderr is the journal stream systemd named in `$JOURNAL_STREAM` ("DEVICE:INODE"): checking the
    inode (as systemd.exec(5) advises) keeps a child whose stderr was redirected from hijacking the journal."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def field_key(name: str) -> str:
    """A journal field name: upper case, [A-Z0-9_], not starting with '_' or a digit, at most 64 characters."""
    key = _BAD_KEY.sub("_", name.upper()).lstrip("_")
    if not key or key[0].isdigit():
        key = "F_" + key
    return key[:64]


def encode(fields: Iterable[tuple[str, Any]]) -> bytes:
    """The native protocol's encoding of `fields` (already valid keys)."""
    out = bytearray()
    for key, value in fields:
        if isinstance(value, bytes):
            data = value
        else:
            data = str(value).encode("utf-8", "surrogateescape")
        out += key.encode("ascii")
        if b"\n" in data or not _is_text(data):
            out += b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += b"=" + data + b"\n"
    return bytes(out)


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def record_fields(record: logging.LogRecord, formatter: logging.Formatter | None = None) -> list[tuple[str, Any]]:
    """The journal fields of one log record."""
    message = record.getMessage()
    if record.exc_info:
        message += "\n" + (formatter or logging.Formatter()).formatException(record.exc_info)
    fields: list[tuple[str, Any]] = [
        ("MESSAGE", message), ("PRIORITY", _PRIORITY.get(record.levelno, 6)), ("SYSLOG_IDENTIFIER", IDENTIFIER),
        ("SYSLOG_PID", os.getpid()), ("CODE_FILE", record.pathname), ("CODE_LINE", record.lineno),
        ("CODE_FUNC", record.funcName), ("SDD_LOGGER", record.name)]
    if record.threadName and record.threadName != "MainThread":
        fields.append(("SDD_THREAD", record.threadName))
    extra = getattr(record, "sdd_fields", None)
    if extra:
        seen = set()
        for name, value in extra.items():
            if name == "event":
                mid = MESSAGE_IDS.get(str(value))
                if mid:
                    fields.append(("MESSAGE_ID", mid))
                fields.append(("SDD_EVENT", value))
                continue
            key = FIELD_NAMES.get(name) or field_key("SDD_" + name)
            if key in seen or value is None:
                continue
            seen.add(key)
            fields.append((key, value))
    return fields


class JournalHandler(logging.Handler):
    """A logging handler that writes each record to journald in its native protocol."""

    def __init__(self, path: str = JOURNAL_SOCKET, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.path = path
        self.dropped = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(SEND_TIMEOUT)
        self._fallback = logging.StreamHandler(sys.stderr)
        self._fallback.setFormatter(LogfmtFormatter())
        self._send_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = record_fields(record, self.formatter)
            if self.dropped:
                fields.append(("SDD_JOURNAL_DROPPED", self.dropped))
            data = encode(fields)
        except Exception:  # noqa: BLE001 -- a logging bug must not become the caller's exception
            self.handleError(record)
            return
        try:
            with self._send_lock:
                self._send(data)
            self.dropped = 0
        except TimeoutError:
            self.dropped += 1  # journald is not taking records: do not hold the daemon up
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
                self._fallback.emit(record)  # no journal (any more): stderr keeps the record
            else:
                self.dropped += 1

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendto(data, self.path)
            return
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
        # Too large for a datagram: the record in a sealed memfd, its descriptor passed to journald.
        fd = os.memfd_create("sdd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0,
                               self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        try:
            self._sock.close()
        finally:
            super().close()


__all__ = ["FIELD_NAMES", "JOURNAL_SOCKET", "MESSAGE_IDS", "JournalHandler", "connected_to_journal", "encode",
           "field_key", "record_fields"]
