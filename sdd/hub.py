"""The daemon's event hub: one place where intake and engine events fan out to API subscribers and D-Bus.

Publishing never blocks and never grows memory without bound: each subscriber has a bounded queue, and a
subscriber that falls behind loses events and is told so by one `lagged` event carrying how many it missed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

# Event names published on the hub (the `event` field of the socket API's subscribe stream): one list,
# shared with the clients.
from sdd_client.events import (
    DETECTION_DUPLICATE,
    DETECTION_EXCLUDED,
    DETECTION_MATCHED,
    DETECTION_NO_MATCH,
    DETECTION_RECEIVED,
    DETECTION_REJECTED,
    EVENT_NAMES,
    GUARD_TRIPPED,
    LAGGED,
    NOTIFICATION,
    RUN_FINISHED,
    RUN_STARTED,
    STATUS_CHANGED,
    STEP_FINISHED,
    STEP_STARTED,
    STEP_WAITING,
)


@dataclass(eq=False)
class Subscription:
    """A bounded stream of (event, data) pairs; iterate it, and close it when done."""

    hub: EventHub
    maxsize: int
    events: frozenset[str] | None = None  # None: every event
    _queue: deque[tuple[str, dict[str, Any]]] = field(default_factory=deque)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _dropped: int = 0
    closed: bool = False

    def _offer(self, name: str, data: dict[str, Any]) -> None:
        if self.events is not None and name not in self.events:
            return
        if len(self._queue) >= self.maxsize:
            self._dropped += 1
        else:
            self._queue.append((name, data))
        self._wakeup.set()

    async def get(self) -> tuple[str, dict[str, Any]]:
        while True:
            if self._dropped:
                missed, self._dropped = self._dropped, 0
                return LAGGED, {"missed": missed}
            if self._queue:
                return self._queue.popleft()
            if self.closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    def __aiter__(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        return self

    async def __anext__(self) -> tuple[str, dict[str, Any]]:
        return await self.get()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()
        self.hub._subscribers.discard(self)


class EventHub:
    """Fan-out of daemon events. Must be used from the event loop's thread."""

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    def subscribe(self, maxsize: int = 1000, events: frozenset[str] | None = None) -> Subscription:
        sub = Subscription(self, maxsize, events)
        self._subscribers.add(sub)
        return sub

    def publish(self, name: str, data: dict[str, Any]) -> None:
        for sub in tuple(self._subscribers):
            sub._offer(name, data)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)


__all__ = [
    "DETECTION_DUPLICATE", "DETECTION_EXCLUDED", "DETECTION_MATCHED", "DETECTION_NO_MATCH", "DETECTION_RECEIVED",
    "DETECTION_REJECTED", "EVENT_NAMES", "GUARD_TRIPPED", "LAGGED", "NOTIFICATION", "RUN_FINISHED", "RUN_STARTED", "STATUS_CHANGED",
    "STEP_FINISHED", "STEP_STARTED", "STEP_WAITING", "EventHub", "Subscription",
]
