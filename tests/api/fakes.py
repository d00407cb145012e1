"""A minimal stand-in for the daemon's Control (sdd/api/control.py), only for the unit tests of framing and authorisation.

End-to-end behaviour of the methods is tested against the real daemon (tests/support/daemon.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdd.config import Config, parse_config
from sdd.hub import EventHub


@dataclass
class RecordingStore:
    audits: list[dict[str, Any]] = field(default_factory=list)

    async def audit(self, **entry: Any) -> int:
        self.audits.append(entry)
        return len(self.audits)

    async def audit_count(self, row_id: int, count: int, last: float, targets: list[str] | None = None) -> bool:
        self.submit_audit_count(row_id, count, last, targets)
        return True

    def submit_audit_count(self, row_id: int, count: int, last: float, targets: list[str] | None = None) -> None:
        self.audits[row_id - 1]["details"] = {**self.audits[row_id - 1]["details"], "count": count, "last": last,
                                              "targets": list(targets or [])}

    def get_run(self, run_id: str) -> None:
        return None

    def runs_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        return []


@dataclass
class FakeDaemon:
    config: Config
    hub: EventHub = field(default_factory=EventHub)
    store: RecordingStore = field(default_factory=RecordingStore)
    workflows: dict[str, Any] = field(default_factory=dict)
    engine: Any = None
    reloads: int = 0

    def status(self) -> dict[str, Any]:
        return {"version": "test", "state": "running", "pid": os.getpid(), "active_runs": 0}

    async def reload(self, uid: int) -> dict[str, Any]:
        self.reloads += 1
        return {"ok": True, "errors": [], "workflows": 0}

    async def cancel_run(self, run_id: str, uid: int) -> bool:
        return False


def fake_daemon(tmp: Path, **api: Any) -> FakeDaemon:
    raw = {"paths": {"spool": str(tmp / "spool"), "state": str(tmp / "state"), "socket": str(tmp / "run" / "sdd.sock"),
                     "workflows": [str(tmp / "wf")]},
           "api": {"socket_group": "", **api}, "dbus": {"bus": "none"}}
    return FakeDaemon(parse_config(raw))
