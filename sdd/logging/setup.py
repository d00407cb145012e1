"""Where sdd's log records go: journald's native protocol, or logfmt lines on stderr (`setup_logging`)."""

from __future__ import annotations

import logging
import os
import sys

from . import journal
from .records import LogfmtFormatter

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup_logging(level: str = "info", target: str = "auto") -> None:
    """Routes every logger to one handler (idempotent): journald's native protocol when `target` is "journal",
    or "auto" and stderr is the journal stream systemd gave us; else logfmt lines on stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_sdd", False):
            root.removeHandler(handler)
            handler.close()
    handler = _journal_handler(target) or logging.StreamHandler(sys.stderr)
    if isinstance(handler, logging.StreamHandler):
        handler.setFormatter(LogfmtFormatter(journal=bool(os.environ.get("JOURNAL_STREAM"))))
    handler._sdd = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))


def _journal_handler(target: str) -> logging.Handler | None:
    if target == "stderr":
        return None
    path = os.environ.get("SDD_JOURNAL_SOCKET") or journal.JOURNAL_SOCKET  # (tests bind their own socket)
    if target == "auto" and not journal.connected_to_journal():
        return None
    if not os.path.exists(path):
        if target == "journal":
            print(f"sdd: logging.target is \"journal\" but {path} does not exist; logging to stderr",
                  file=sys.stderr)
        return None
    return journal.JournalHandler(path)
