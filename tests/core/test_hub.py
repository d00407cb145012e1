"""Event hub: fan-out in order, bounded per subscriber, a lagging subscriber is told how much it missed."""

from __future__ import annotations

import asyncio

from sdd.hub import LAGGED, EventHub


async def test_every_subscriber_gets_every_event_in_order() -> None:
    hub = EventHub()
    a, b = hub.subscribe(), hub.subscribe()
    for i in range(3):
        hub.publish("run.started", {"i": i})
    for sub in (a, b):
        got = [await sub.get() for _ in range(3)]
        assert got == [("run.started", {"i": 0}), ("run.started", {"i": 1}), ("run.started", {"i": 2})]


async def test_slow_subscriber_is_bounded_and_gets_lagged() -> None:
    hub = EventHub()
    slow = hub.subscribe(maxsize=5)
    for i in range(100):
        hub.publish("step.finished", {"i": i})
    assert len(slow._queue) == 5  # memory stays bounded whatever the publisher does
    assert await slow.get() == (LAGGED, {"missed": 95})
    assert await slow.get() == ("step.finished", {"i": 0})


async def test_filtered_subscription_and_close() -> None:
    hub = EventHub()
    sub = hub.subscribe(events=frozenset({"run.finished"}))
    hub.publish("run.started", {})
    hub.publish("run.finished", {"ok": True})
    assert await sub.get() == ("run.finished", {"ok": True})
    waiter = asyncio.ensure_future(sub.get())
    await asyncio.sleep(0)  # let the waiter block on the empty queue
    sub.close()
    try:
        await asyncio.wait_for(waiter, 1)
    except StopAsyncIteration:
        pass
    else:
        raise AssertionError("a closed subscription must end iteration")
    assert hub.subscriber_count == 0
