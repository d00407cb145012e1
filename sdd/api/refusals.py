"""Refused API calls in the audit log, coalesced: one row per caller uid, method and outcome each minute,
with a count — so nobody can grow the audit log by hammering the socket with calls they may not make.

The first refusal of a (uid, method, outcome) in a calendar minute is written at once, so an attack shows in
the audit log while it happens (`details.count` = 1). Later ones in that minute update that same row rather
than add one: its `count`, the time of the `last` one and a sample of the `targets` named (up to
`MAX_TARGETS` distinct), written when the count reaches a power of two or a new target joins the sample, and
once more when the minute is over (or the server closes) — a handful of updates however many calls come.
The bound: at most `MAX_KEYS` rows a minute in all (past that, every further kind of refusal in the minute
is folded into one row per outcome with actor `uid:*` and method `*`), and in practice one row a minute per
method a refused caller tries. A crash loses at most the count since the last update ("at least").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

WINDOW = 60.0      # seconds: refusals are coalesced per calendar minute
MAX_KEYS = 1000    # distinct (uid, method, outcome) rows per minute before they fold into one per outcome
MAX_TARGETS = 10   # distinct targets a coalesced row keeps as a sample


@dataclass(slots=True)
class _Entry:
    count: int
    first: float
    last: float
    targets: list[str]
    row: asyncio.Future[Any] | None = None  # the insert of the row; resolves to its id
    written: int = 1                          # the count the row holds


Key = tuple[int | None, str, str, int]  # uid (None: folded), method ("*": folded), outcome, minute


class RefusalAudit:
    """`await refused(...)` for each refused call; `await close()` writes what is still only counted."""

    def __init__(self, store: Callable[[], Any], *, window: float = WINDOW, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store  # a getter: the daemon may have no store (yet, or any more)
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._entries: dict[Key, _Entry] = {}
        self._per_minute: dict[int, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.folded = 0  # refusals counted in a folded row (for tests and status)

    async def refused(self, uid: int, pid: int, method: str, outcome: str, message: str,
                      target: str | None) -> None:
        now = self._clock()
        minute = int(now // self.window)
        key: Key = (uid, method, outcome, minute)
        entry = self._entries.get(key)
        if entry is None and self._per_minute.get(minute, 0) >= self.max_keys:
            key = (None, "*", outcome, minute)
            entry = self._entries.get(key)
            self.folded += 1
        if entry is not None:
            entry.count += 1
            entry.last = now
            new_target = (target is not None and key[0] is not None and target not in entry.targets
                          and len(entry.targets) < MAX_TARGETS)
            if new_target:
                entry.targets.append(str(target))
            if new_target or entry.count & (entry.count - 1) == 0:  # a new target, or a power of two
                self._update_soon(entry)
            return
        entry = self._entries[key] = _Entry(1, now, now, [] if target is None or key[0] is None else [target])
        self._per_minute[minute] = self._per_minute.get(minute, 0) + 1
        self._arm()
        store = self._store()
        if store is None:
            return
        actor = "uid:*" if key[0] is None else f"uid:{uid}"
        details = {"uid": key[0], "pid": pid if key[0] is not None else None, "message": message[:500],
                   "count": 1, "first": now, "last": now, "targets": list(entry.targets),
                   "coalesced": f"per uid, method and {self.window:g} s"}
        try:
            entry.row = asyncio.ensure_future(store.audit(
                actor=actor, action=f"api.{key[1]}", target=target if key[0] is not None else None,
                detection_id=None, run_id=None, outcome=outcome, details=details))
            await entry.row
        except Exception:  # a failing audit write is logged, never turned into a reply
            log.exception("API: cannot write the audit record of a refused %s by uid %d", method, uid)

    def _update_soon(self, entry: _Entry) -> None:
        """Writes the row's count now, without making the caller wait (skipped while its insert is in flight:
        a later update or the minute's end writes it)."""
        store = self._store()
        if store is None or entry.row is None or not entry.row.done() or entry.row.exception() is not None:
            return
        try:
            store.submit_audit_count(entry.row.result(), entry.count, entry.last, entry.targets)
            entry.written = entry.count
        except Exception:  # the row keeps the count it had; the minute's end tries again
            log.debug("API: cannot queue the count of coalesced refusals", exc_info=True)

    def _arm(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        delay = self.window - (self._clock() % self.window) + 0.05
        self._timer = loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self.flush(before=int(self._clock() // self.window)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._entries:
            self._arm()

    async def flush(self, before: int | None = None) -> None:
        """Writes the counts of the minutes before `before` (all minutes when None) and forgets them."""
        done = [k for k in self._entries if before is None or k[3] < before]
        for key in done:
            entry = self._entries.pop(key)
            if entry.count > entry.written:
                await self._write_count(entry)
        for minute in [m for m in self._per_minute if before is None or m < before]:
            del self._per_minute[minute]

    async def _write_count(self, entry: _Entry) -> None:
        store = self._store()
        if store is None or entry.row is None:
            return
        try:
            row_id = await entry.row
            if row_id:
                await store.audit_count(row_id, entry.count, entry.last, entry.targets)
                entry.written = entry.count
        except Exception:  # the row keeps the count it had; never lose the daemon over it
            log.exception("API: cannot write the count of coalesced refusals")

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush()


__all__ = ["MAX_KEYS", "MAX_TARGETS", "WINDOW", "RefusalAudit"]
