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
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdd.config import ActionsConfig, EngineConfig
from sdd.engine.registry import current_step, report_waiting
from sdd.executor import Executor, InProcessExecutor, Policy
from sdd.executor.protocol import MAX_INFLIGHT
from sdd.logging import LogEvent, story

from .errors import BreakerOpen, Forbidden, RateLimited
from .guards import Guards, Slot, Trip
from .lending import Lane
from .runlog import RunLog

log = logging.getLogger("sdd.actions")
_LOG_EVENTS = {"quarantine_file": LogEvent.QUARANTINED, "restore_file": LogEvent.RESTORED}

# Desktop Notification(title, body, urgency) sink. Returns None when the notification went out, else why it
# could not be delivered (no bus, not connected, ...), which the action reports.
NotifyFn = Callable[[str, str, str], "str | None"]


class LoggedGuards(Guards):
    """The guards, with one log line for each refusal (disabled action, open breaker) naming the run,
    workflow and detection it stopped, and one for each trip (not one per step the trip holds)."""

    def __init__(self, *args: Any, fields: Callable[..., dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fields = fields

    def acquire(self, action: str) -> None:
        try:
            super().acquire(action)
        except (RateLimited, Forbidden) as exc:
            log.warning("guard refused", extra=self._fields(guard=f"rate_limit:{action}", reason=str(exc),
                                                          event=LogEvent.GUARD_REFUSED))
            raise

    def before_call(self, key: str) -> None:
        try:
            super().before_call(key)
        except BreakerOpen as exc:
            log.warning("guard refused", extra=self._fields(guard=f"breaker:{key}", reason=str(exc),
                                                          event=LogEvent.GUARD_REFUSED))
            raise

    def _announce(self, trip: Trip) -> None:
        log.warning("guard tripped", extra=self._fields(guard=trip.guard, reason=trip.reason,
                                                      event=LogEvent.GUARD_TRIPPED))
        try:
            super()._announce(trip)
        except Exception:
            log.exception("announcing the trip of %s failed", trip.guard)


async def _report_waiting(reason: str | None, since: float) -> None:
    await report_waiting(reason, since)


@dataclass(eq=False)
class ActionServices:
    """Mutable on purpose: it is the actions' shared runtime state, created once per daemon."""

    config: ActionsConfig
    state_dir: Path
    store: Any | None = None          # sdd.store.Store; every action also works without one
    notify: NotifyFn | None = None    # desktop Notification(title, body, urgency) sink (hub → D-Bus)
    daemon_pid: int = field(default_factory=os.getpid)
    # The seam to the host-changing primitives: in-process unless the daemon hands over a SocketExecutor.
    executor: Executor | None = None
    guards: Guards = field(init=False)
    # Register as an engine listener (`engine.add_listener(services.run_log)`) so reports see step timing.
    run_log: RunLog = field(default_factory=RunLog)
    # run_id → {"detection": sdd's id, "external_id": the producer's}, for log lines (the daemon sets it).
    run_labels: Callable[[str], dict[str, Any]] | None = None
    # Told of each guard trip (rate limit reached with steps waiting, breaker opened): the daemon announces it
    # (a desktop Notification, an event on the stream).
    on_guard_trip: Callable[[Trip], None] | None = None
    # Told (run id, True) once a step of the run has waited `lending.LEND_AFTER` on another party (a mail
    # relay, a webhook's server: `outbound.call`; a scanner, or its place in `scans`: `run_scan`) and (run id,
    # False) when it has its answer; the daemon lets other runs have the run's slot meanwhile. Called on the
    # event loop.
    on_outbound: Callable[[str, bool], None] | None = None
    # The scans at once: the bound they had when each held a run slot throughout (`set_max_runs`), now that a
    # run waiting on its scanner lends its slot.
    scans: Lane = field(default_factory=lambda: Lane(EngineConfig().max_concurrent_runs))
    # Without a store, exclusions and false-positive records are kept here (and logged), so workflows
    # and tests behave the same; they do not survive a restart.
    memory_exclusions: set[tuple[str, str]] = field(default_factory=set)
    memory_false_positives: list[dict[str, Any]] = field(default_factory=list)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _first_seen: dict[tuple[str, int], float] = field(default_factory=dict)
    _delivered: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self.guards = LoggedGuards(self.config.rate_limits, self.config.breaker_failures, self.config.breaker_reset,
                                   fields=self.log_fields, on_trip=self._guard_tripped)
        if self.store is not None:
            self._restore_guards()
        if self.executor is None:
            self.executor = InProcessExecutor(self.policy())

    def set_max_runs(self, runs: int) -> None:
        """`engine.max_concurrent_runs` (at start and on reload). The scans at once follow it, up to half the
        requests the executor takes in flight: a scan is in flight for its whole length, and quarantines and
        kills must always find a place there."""
        self.scans.set_limit(min(runs, MAX_INFLIGHT // 2))

    def _restore_guards(self) -> None:
        """The rate limits' windows from the acts the audit trail records, and the steps that were waiting."""
        limits, store = self.config.rate_limits, self.store
        assert store is not None
        try:
            longest = max((lim.per_seconds for lim in limits.values()), default=0.0)
            if longest > 0:
                self.guards.seed(store.guard_acts(list(limits), time.time() - longest))
            self.guards.restore_waiters(store.waiting_steps())
        except Exception as exc:  # noqa: BLE001 - a store without these reads (tests) starts with empty windows
            log.warning("rate-limit windows not restored from the history: %s", exc)

    def _guard_tripped(self, trip: Trip) -> None:
        if self.on_guard_trip is not None:
            self.on_guard_trip(trip)

    def guard_slot(self, action: str) -> AbstractAsyncContextManager[Slot]:
        """`async with services.guard_slot("quarantine_file") as slot:` ... `slot.use()` at the point of acting.
        Waits (FIFO, bounded by the step's timeout) while the action's rate limit is reached; the step shows
        `waiting` meanwhile."""
        info = current_step()
        if info is None:
            return self.guards.slot(action)
        return self.guards.slot(action, key=info.idempotency_key, on_wait=_report_waiting)

    def policy(self) -> Policy:
        """What the in-process executor enforces (the root executor builds the same from its own config)."""
        return Policy.build(self.config.allowed_roots, self.vault_dir, self.config.protected_processes,
                            {self.daemon_pid}, scripts_dir=self.config.scripts_dir, user_mode=self.config.user_mode,
                            scanner=self.config.scanner, yara_rules=self.config.yara_rules)

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

    def seen_before(self, key: str, pid: int) -> float | None:
        """The start time `first_seen` recorded for this step and pid, if an earlier attempt saw it."""
        return self._first_seen.get((key, pid))

    def delivered(self, key: str) -> set[str]:
        """The notification channels an earlier attempt of this step (idempotency key) delivered."""
        return self._delivered.get(key, set())

    def remember_delivery(self, key: str, channel: str) -> None:
        if len(self._delivered) > 4096:
            self._delivered.clear()
        self._delivered.setdefault(key, set()).add(channel)

    def log_fields(self, **more: Any) -> dict[str, Any]:
        """`extra=` for a log line an action writes: the run, workflow and detection (sdd's id, and the
        producer's) of the step being run, from the engine's step info and the run log's labels."""
        info = current_step()
        if info is None:
            return story(**more)
        labels = self.run_labels(info.run_id) if self.run_labels is not None else self.run_log.labels(info.run_id)
        external = labels.get("external_id")
        if external is None and info.detection:
            value = info.detection.get("id")
            external = value if isinstance(value, (str, int)) and not isinstance(value, bool) else None
        return story(info.run_id, info.workflow_id, labels.get("detection"), step=info.step_id,
                     **({"external_id": external} if external is not None else {}), **more)

    def guards_status(self) -> dict[str, Any]:
        """Rate-limit and circuit-breaker state, for the daemon's `status`."""
        return self.guards.status()

    async def audit(self, action: str, target: str, outcome: str, details: dict[str, Any],
                    detection_id: str | None = None, run_id: str | None = None) -> None:
        """One audit row per destructive act; an audit failure is logged, never undoes the act."""
        event = _LOG_EVENTS.get(action)
        log.info(f"{action}: {outcome}", extra=self.log_fields(target=target, **_flat(details),
                                                               **({"event": event} if event else {})))
        if self.store is None:
            return
        try:
            actor = f"run:{run_id}" if run_id else None
            await self.store.audit(actor, action, target, detection_id, run_id, outcome, details)
        except Exception as exc:  # noqa: BLE001 - the act already happened; a lost audit row must not fail it
            log.warning("could not write audit row for %s %s: %s", action, target, exc)


_RESERVED = frozenset({"run_id", "workflow", "detection", "external_id", "step", "target"})


def _flat(details: dict[str, Any]) -> dict[str, Any]:
    """Audit details as log fields: scalars as they are, lists of scalars comma-joined, nothing nested."""
    out: dict[str, Any] = {}
    for k, v in details.items():
        if k in _RESERVED:
            continue
        if v is None or isinstance(v, (str, int, float, bool)):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(i, (str, int, float)) for i in v):
            out[k] = ",".join(map(str, v)) or "-"
    return out


def guards_status(services: ActionServices) -> dict[str, Any]:
    """Rate-limit and circuit-breaker state, for the daemon's `status`."""
    return services.guards.status()
