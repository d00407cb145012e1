"""The daemon's event hub: one place where intake and engine events fan out to API subscribers and D-Bus.

Publishing never blocks and never grows memory without bound: each subscriber has a bounded queue, and a
subscriber that falls behind loses events and is told so by one `lagged` event carrying how many it missed.

Watchers cost only what they ask for. Subscribers are indexed by event kind, so publishing a kind nobody
wants does nothing at all (no object, no queue, no wake-up), and `wants(kind)` lets a publisher skip even
building the event's data. An event that is wanted becomes one `Published` shared by every subscriber that
wants it: its socket frame is encoded once, on first use, and the same bytes go to every subscriber.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from msgpack import packb
from sdd_client.errors import FrameTooLarge, ProtocolError

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
from sdd_client.protocol import HEADER, MAX_FRAME, encode, event_message, new_packer, pack_payload

log = logging.getLogger(__name__)

Encoder = Callable[[str, Mapping[str, Any]], bytes]
TAKE_MAX = 1024  # events one `take()` hands over: bounds a single write to a subscriber's socket


# The msgpack bytes every frame of a kind starts with: a map of two, "event" and its name, then the "data"
# key; only the data is packed per event (the bytes are those of `encode(event_message(name, data))`).
_FRAME_PREFIXES = {name: b"\x82" + packb("event") + packb(name) + packb("data") for name in EVENT_NAMES}


def socket_frame(name: str, data: Mapping[str, Any]) -> bytes:
    """The subscribe stream's frame of one event (length prefix + msgpack map)."""
    prefix = _FRAME_PREFIXES.get(name)
    if prefix is None or type(data) is not dict:
        return encode(event_message(name, data))
    payload = prefix + pack_payload(data)
    if len(payload) > MAX_FRAME:
        raise FrameTooLarge(f"message of {len(payload)} bytes exceeds the {MAX_FRAME}-byte limit")
    return HEADER.pack(len(payload)) + payload


def frame_encoder() -> Encoder:
    """`socket_frame` with a Packer of its own, for one thread (an `EventHub`'s): the same bytes, at half the
    cost a frame (the per-thread packer lookup and the layers around it were half of it). A failed pack
    (a name that is not UTF-8, a value msgpack cannot take) gets a new Packer and goes the general way,
    which escapes such a name or raises as `socket_frame` does."""
    pack = new_packer().pack
    header = HEADER.pack
    prefixes = _FRAME_PREFIXES

    def encode_frame(name: str, data: Mapping[str, Any]) -> bytes:
        nonlocal pack
        prefix = prefixes.get(name)
        if prefix is None or type(data) is not dict:
            return socket_frame(name, data)
        try:
            body = pack(data)
        except (TypeError, ValueError, OverflowError):  # (UnicodeEncodeError is a ValueError: the general way escapes it)
            pack = new_packer().pack  # whatever the old one holds of the failed message is not reused
            return socket_frame(name, data)
        size = len(prefix) + len(body)
        if size > MAX_FRAME:
            raise FrameTooLarge(f"message of {size} bytes exceeds the {MAX_FRAME}-byte limit")
        return header(size) + prefix + body

    return encode_frame


class Published:
    """One event as published: the same object reaches every subscriber that wants it."""

    __slots__ = ("_encoder", "_frame", "data", "name")

    def __init__(self, name: str, data: dict[str, Any], encoder: Encoder) -> None:
        self.name = name
        self.data = data
        self._encoder = encoder
        self._frame: bytes | None = None

    def frame(self) -> bytes | None:
        """The event's socket frame, encoded on the first call only; None (logged once) when it cannot be."""
        frame = self._frame
        if frame is None:
            try:
                frame = self._frame = self._encoder(self.name, self.data)
            except (ProtocolError, TypeError, ValueError, OverflowError) as exc:
                log.warning("event %s cannot be sent to subscribers: %s", self.name, exc)
                frame = self._frame = b""
        return frame or None


class Subscription:
    """A bounded stream of events; iterate it (pairs of name and data) or `take()` batches, and close it."""

    def __init__(self, hub: EventHub, maxsize: int, events: frozenset[str] | None = None) -> None:
        self.hub = hub
        self.maxsize = maxsize
        self.events = events  # None: every event
        self.closed = False
        self.offered = 0  # events the hub handed to this subscription (kept or dropped)
        self._queue: deque[Published] = deque()
        self._wakeup = asyncio.Event()
        self._dropped = 0
        self._last_batch = -1.0  # loop time of the last `batch()`

    def _offer(self, event: Published) -> None:
        self.offered += 1
        queue = self._queue
        if len(queue) >= self.maxsize:
            self._dropped += 1
            self._wakeup.set()
        else:
            # The reader waits only on an empty queue: the first event wakes it, the rest need not.
            if not queue:
                self._wakeup.set()
            queue.append(event)

    @property
    def queued(self) -> int:
        """Events queued and not yet taken (a property, not __len__: an empty subscription stays truthy)."""
        return len(self._queue)

    def take(self, limit: int = TAKE_MAX) -> list[Published]:
        """What is queued now, oldest first (at most `limit`), without waiting; a `lagged` event first when
        events were dropped since the last take."""
        out: list[Published] = []
        if self._dropped:
            missed, self._dropped = self._dropped, 0
            out.append(Published(LAGGED, {"missed": missed}, self.hub.encoder))
        queue = self._queue
        n = min(len(queue), limit - len(out))
        if n == len(queue):
            out.extend(queue)
            queue.clear()
        else:
            popleft = queue.popleft
            out.extend(popleft() for _ in range(n))
        return out

    async def wait(self) -> bool:
        """Waits until something is queued; False once the subscription is closed and empty."""
        while not (self._queue or self._dropped):
            if self.closed:
                return False
            self._wakeup.clear()
            await self._wakeup.wait()
        return True

    async def batch(self, window: float) -> list[Published] | None:
        """The next batch of events (see `take`), at most one per `window` seconds: an event after a quiet
        spell is handed over at once, the events of a burst are gathered for up to `window` so that the
        reader makes one write of them. None once the subscription is closed and empty."""
        if not await self.wait():
            return None
        loop = asyncio.get_running_loop()
        delay = self._last_batch + window - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self._last_batch = loop.time()
        return self.take()

    async def get(self) -> tuple[str, dict[str, Any]]:
        if not await self.wait():
            raise StopAsyncIteration
        event = self.take(1)[0]
        return event.name, event.data

    def __aiter__(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        return self

    async def __anext__(self) -> tuple[str, dict[str, Any]]:
        return await self.get()

    def close(self) -> None:
        """Stops new events; what is queued can still be taken."""
        if not self.closed:
            self.closed = True
            self.hub._remove(self)
        self._wakeup.set()


class EventHub:
    """Fan-out of daemon events. Must be used from the event loop's thread."""

    def __init__(self, encoder: Encoder | None = None) -> None:
        self.encoder = encoder if encoder is not None else frame_encoder()
        self._subscribers: list[Subscription] = []
        self._everything: tuple[Subscription, ...] = ()  # subscribers of every event
        self._routes: dict[str, tuple[Subscription, ...]] = {}  # kind -> every subscriber that wants it

    def subscribe(self, maxsize: int = 1000, events: frozenset[str] | None = None) -> Subscription:
        sub = Subscription(self, maxsize, events)
        self._subscribers.append(sub)
        self._reroute()
        return sub

    def _remove(self, sub: Subscription) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)
            self._reroute()

    def _reroute(self) -> None:
        # Rebuilt on (un)subscribe, which is rare, so that publishing is one dict lookup.
        self._everything = tuple(s for s in self._subscribers if s.events is None)
        kinds = set(EVENT_NAMES).union(*(s.events for s in self._subscribers if s.events is not None))
        routes = {}
        for kind in kinds:
            targets = tuple(s for s in self._subscribers if s.events is None or kind in s.events)
            if targets:
                routes[kind] = targets
        self._routes = routes

    def wants(self, name: str) -> bool:
        """Whether anyone would receive an event of this kind (a publisher may skip building it if not)."""
        return bool(self._routes.get(name, self._everything))

    def publish(self, name: str, data: dict[str, Any]) -> None:
        targets = self._routes.get(name, self._everything)
        if not targets:
            return
        event = Published(name, data, self.encoder)
        for sub in targets:
            sub._offer(event)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)


__all__ = [
    "DETECTION_DUPLICATE", "DETECTION_EXCLUDED", "DETECTION_MATCHED", "DETECTION_NO_MATCH", "DETECTION_RECEIVED",
    "DETECTION_REJECTED", "EVENT_NAMES", "GUARD_TRIPPED", "LAGGED", "NOTIFICATION", "RUN_FINISHED", "RUN_STARTED",
    "STATUS_CHANGED", "STEP_FINISHED", "STEP_STARTED", "STEP_WAITING", "Encoder", "EventHub", "Published",
    "Subscription", "frame_encoder", "socket_frame",
]
