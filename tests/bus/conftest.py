"""Fixtures and helpers for the D-Bus tests: a private dbus-daemon, a signal collector, a bridge on a hub."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus

from tests.support.dbus import fake_notifications, private_bus  # noqa: F401 - fixtures

WAIT = 10.0  # generous deadline for anything that should happen "at once"


async def call_bus(bus: MessageBus, member: str, signature: str = "", body: list[Any] | None = None) -> Message:
    reply = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member=member,
            signature=signature,
            body=body or [],
        )
    )
    assert reply is not None
    if reply.message_type is MessageType.ERROR:
        raise RuntimeError(f"{member} failed: {reply.error_name} {reply.body}")
    return reply


async def connect(address: str) -> MessageBus:
    """A dbus-next client connection whose death (when a test kills the bus) is not an unhandled error."""
    bus = await MessageBus(bus_address=address).connect()
    bus._disconnect_future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return bus


def close_bus(bus: MessageBus) -> None:
    """Disconnect for good: unregister the fd from the loop, then close it (dbus-next 0.2.3 may leave the
    socket open, and a closed fd left registered would hang the next connection that reuses its number)."""
    bus.disconnect()
    loop = bus._loop
    if not loop.is_closed():
        loop.remove_reader(bus._fd)
        loop.remove_writer(bus._fd)
    for attr in ("_stream", "_sock"):
        obj = getattr(bus, attr, None)
        if obj is not None:
            with contextlib.suppress(OSError):
                obj.close()


@dataclass
class SignalCollector:
    """A plain dbus-next client that records every signal matching its rule."""

    bus: MessageBus
    messages: list[Message] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def start(
        cls, address: str, rule: str = "type='signal',interface='org.searchanddestroy.Sdd1'"
    ) -> SignalCollector:
        bus = await connect(address)
        collector = cls(bus)
        bus.add_message_handler(collector._on_message)
        await call_bus(bus, "AddMatch", "s", [rule])
        return collector

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.sender != "org.freedesktop.DBus":
            self.messages.append(msg)
            self._changed.set()

    def of(self, member: str) -> list[Message]:
        return [m for m in self.messages if m.member == member]

    async def wait_for(self, member: str, n: int = 1, timeout: float = WAIT) -> list[Message]:
        async def _wait() -> list[Message]:
            while len(self.of(member)) < n:
                self._changed.clear()
                await self._changed.wait()
            return self.of(member)

        return await asyncio.wait_for(_wait(), timeout)

    async def wait_until(self, predicate: Any, timeout: float = WAIT) -> None:
        async def _wait() -> None:
            while not predicate(self.messages):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_wait(), timeout)

    def close(self) -> None:
        close_bus(self.bus)


@pytest.fixture
async def collector_factory() -> AsyncIterator[Any]:
    made: list[SignalCollector] = []

    async def make(address: str, rule: str = "type='signal',interface='org.searchanddestroy.Sdd1'") -> SignalCollector:
        c = await SignalCollector.start(address, rule)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
