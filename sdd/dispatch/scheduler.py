"""Periodic workflows: `trigger.schedule` with `every` (seconds) or `at` ("HH:MM", local time, daily).

One sleeping task per scheduled workflow, so an idle daemon has one timer per schedule and nothing else.
A run that overruns its period is never piled on: a tick that comes while the previous run of the same
workflow is still going is skipped (and logged), and missed ticks are not caught up in a burst.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sdd.engine import Schedule, Workflow
from sdd.logging import kv

log = logging.getLogger(__name__)

# Starts a run of the workflow and returns something that finishes with it (or None if it did not start).
Launch = Callable[[Workflow], Awaitable["asyncio.Future[Any] | asyncio.Task[Any] | None"]]


def parse_at(text: str) -> tuple[int, int]:
    """"HH:MM" → (hour, minute); raises ValueError naming the problem."""
    try:
        hh, mm = text.split(":")
        hour, minute = int(hh), int(mm)
    except ValueError:
        raise ValueError(f"schedule at: expected HH:MM, got {text!r}") from None
    if not (0 <= hour < 24 and 0 <= minute < 60):
        raise ValueError(f"schedule at: expected HH:MM, got {text!r}")
    return hour, minute


def next_due(schedule: Schedule, now: float, last_due: float | None = None) -> float:
    """The next time (epoch seconds) a schedule fires strictly after `now`.

    `every`: `last_due + every` (from `now` at first), stepping over ticks already past so that a long
    stall does not fire a burst. `at`: the next local wall-clock HH:MM (today or tomorrow)."""
    if schedule.every is not None:
        period = float(schedule.every)
        if not math.isfinite(period) or period <= 0:  # (validation refuses them; a NaN here never slept)
            raise ValueError(f"schedule every: must be a positive number of seconds, got {period!r}")
        due = (last_due if last_due is not None else now) + period
        if due <= now:
            due += period * (int((now - due) // period) + 1)
        return due
    if schedule.at is not None:
        hour, minute = parse_at(schedule.at)
        local_now = dt.datetime.fromtimestamp(now)
        candidate = local_now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if candidate.timestamp() <= now:
            candidate = (candidate + dt.timedelta(days=1)).replace(hour=hour, minute=minute)
        return candidate.timestamp()
    raise ValueError("schedule has neither 'every' nor 'at'")


def scheduled(workflows: Mapping[str, Workflow]) -> dict[str, Workflow]:
    return {wid: wf for wid, wf in workflows.items() if wf.trigger is not None and wf.trigger.schedule is not None}


class Scheduler:
    """Keeps one timer task per scheduled workflow; `update()` swaps the set on reload."""

    def __init__(self, launch: Launch) -> None:
        self._launch = launch
        self._tasks: dict[str, tuple[Workflow, asyncio.Task[None]]] = {}
        # Outlives reloads, so a reload does not let a second run start while the first still runs.
        self._running: dict[str, asyncio.Future[Any] | asyncio.Task[Any]] = {}
        self.skipped = 0

    def update(self, workflows: Mapping[str, Workflow]) -> None:
        wanted = scheduled(workflows)
        for wid in list(self._tasks):
            wf, task = self._tasks[wid]
            new = wanted.get(wid)
            if new is None or new.trigger != wf.trigger:
                task.cancel()
                del self._tasks[wid]
        for wid, wf in wanted.items():
            if wid in self._tasks:
                self._tasks[wid] = (wf, self._tasks[wid][1])  # same timing, newer definition
                continue
            self._tasks[wid] = (wf, asyncio.create_task(self._loop(wid), name=f"schedule:{wid}"))

    def stop(self) -> None:
        for _, task in self._tasks.values():
            task.cancel()
        self._tasks.clear()

    @property
    def next_runs(self) -> dict[str, float]:
        return dict(getattr(self, "_next", {}))

    async def _loop(self, wid: str) -> None:
        last: float | None = None
        nexts: dict[str, float] = self.__dict__.setdefault("_next", {})
        try:
            while True:
                wf = self._tasks[wid][0]
                assert wf.trigger is not None and wf.trigger.schedule is not None
                try:
                    due = next_due(wf.trigger.schedule, time.time(), last)
                except ValueError as exc:
                    log.error("bad schedule", extra=kv(workflow=wid, error=exc))
                    return
                nexts[wid] = due
                # One timer; wall-clock jumps are re-checked when it fires.
                while (delay := due - time.time()) > 0:
                    await asyncio.sleep(delay)
                last = due
                wf = self._tasks[wid][0]
                previous = self._running.get(wid)
                if previous is not None and not previous.done():
                    self.skipped += 1
                    log.warning("scheduled run skipped: the previous one is still running", extra=kv(workflow=wid))
                    continue
                try:
                    handle = await self._launch(wf)
                except Exception:
                    log.exception("scheduled run failed to start", extra=kv(workflow=wid))
                    continue
                if handle is not None:
                    self._running[wid] = handle
        finally:
            nexts.pop(wid, None)
