"""sdd.logging: structured log records (records.py), the journald handler (journal.py), and where records
go (setup.py). Re-exports only."""

from .records import LogEvent, LogfmtFormatter, kv, story
from .setup import setup_logging

__all__ = ["LogEvent", "LogfmtFormatter", "kv", "setup_logging", "story"]
