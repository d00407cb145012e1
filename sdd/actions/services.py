"""What the built-in actions need from the daemon, handed over in one object (`ActionServices`).

Actions never import the daemon, the API or the bus: the daemon builds an `ActionServices` with its
config, state directory, store (or None) and a desktop-notification callback, and passes it to
`builtin_actions()`. The object also carries the in-memory state the actions share: the guards, per-path
locks (two parallel steps on one file must not interleave) and first-seen process start times.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdd.config import ActionsConfig
from sdd.logging import LogEvent, kv

from .guards import Guards
from .runlog import RunLog

log = logging.getLogger("sdd.actions")
_LOG_EVENTS = {"quarantine_file": LogEvent.QUARANTINED, "restore_file": LogEvent.RESTORED}

NotifyFn = Callable[[str, str, str], None]


@dataclass(eq=False)
class ActionServices:
    """Mutable on purpose: it is the actions' shared runtime state, created once per daemon."""

    config: ActionsConfig
    state_dir: Path
    store: Any | None = None          # sdd.store.Store; every action also works without one
    notify: NotifyFn | None = None    # desktop Notification(title, body, urgency) sink (hub → D-Bus)
    daemon_pid: int = field(default_factory=os.getpid)
    guards: Guards = field(init=False)
    # Register as an engine listener (`engine.add_listener(services.run_log)`) so reports see step timing.
    run_log: RunLog = field(default_factory=RunLog)
    # Without a store, exclusions and false-positive records are kept here (and logged), so workflows
    # and tests behave the same; they do not survive a restart.
    memory_exclusions: set[tuple[str, str]] = field(default_factory=set)
    memory_false_positives: list[dict[str, Any]] = field(default_factory=list)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _first_seen: dict[tuple[str, int], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self.guards = Guards(self.config.rate_limits, self.config.breaker_failures, self.config.breaker_reset)

    @property
    def vault_dir(self) -> Path:
        return self.state_dir / "vault"

    @property
    def reports_dir(self) -> Path:
        return self.state_dir / "reports"

    def lock(self, key: str) -> asyncio.Lock:
        """A lock per target (path, quarantine id): parallel steps on one file take turns."""
        lk = self._locks.get(key)
        if lk is None:
            if len(self._locks) > 4096:  # drop idle locks so a long-running daemon does not grow
                for k in [k for k, v in self._locks.items() if not v.locked()]:
                    del self._locks[k]
            lk = self._locks[key] = asyncio.Lock()
        return lk

    def first_seen(self, key: str, pid: int, start_time: float) -> float:
        """The start time recorded the first time this step looked at `pid` (stable across attempts)."""
        if len(self._first_seen) > 4096:
            self._first_seen.clear()
        return self._first_seen.setdefault((key, pid), start_time)

    def guards_status(self) -> dict[str, Any]:
        """Rate-limit and circuit-breaker state, for the daemon's `status`."""
        return self.guards.status()

    async def audit(self, action: str, target: str, outcome: str, details: dict[str, Any],
                    detection_id: str | None = None, run_id: str | None = None) -> None:
        """One audit row per destructive act; an audit failure is logged, never undoes the act."""
        event = _LOG_EVENTS.get(action)
        if event is not None:
            log.info(f"{action}: {outcome}", extra=kv(event=event, action=action, target=target, outcome=outcome,
                                                      run_id=run_id, detection=detection_id, **details))
        else:
            log.info("%s %s: %s %s", action, target, outcome, details)
        if self.store is None:
            return
        try:
            actor = f"run:{run_id}" if run_id else None
            await self.store.audit(actor, action, target, detection_id, run_id, outcome, details)
        except Exception as exc:  # noqa: BLE001 - the act already happened; a lost audit row must not fail it
            log.warning("could not write audit row for %s %s: %s", action, target, exc)


def guards_status(services: ActionServices) -> dict[str, Any]:
    """Rate-limit and circuit-breaker state, for the daemon's `status`."""
    return services.guards.status()
