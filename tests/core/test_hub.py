"""Event hub: fan-out in order, bounded per subscriber, a lagging subscriber is told how much it missed; a
watcher costs only the kinds it asked for, and each event is encoded once whatever the number of watchers."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import msgpack
import pytest
from sdd_client.errors import FrameTooLarge
from sdd_client.protocol import MAX_FRAME, decode, encode, event_message

from sdd.hub import (
    EVENT_NAMES,
    LAGGED,
    RUN_FINISHED,
    RUN_STARTED,
    STEP_FINISHED,
    EventHub,
    frame_encoder,
    socket_frame,
)


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


class CountingEncoder:
    """The hub's real socket encoder, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, name: str, data: Mapping[str, Any]) -> bytes:
        self.calls += 1
        return socket_frame(name, data)


async def test_a_subscriber_for_run_finished_receives_only_those_and_costs_nothing_on_other_kinds() -> None:
    encoder = CountingEncoder()
    hub = EventHub(encoder)
    sub = hub.subscribe(events=frozenset({RUN_FINISHED}))
    for i in range(1000):
        hub.publish(STEP_FINISHED, {"i": i})
        hub.publish(RUN_STARTED, {"i": i})
    # No queue put, no wake-up, no encode, and a publisher may skip building such events at all.
    assert sub.offered == 0 and not sub._queue and not sub._wakeup.is_set()
    assert encoder.calls == 0
    assert not hub.wants(STEP_FINISHED) and hub.wants(RUN_FINISHED)
    hub.publish(RUN_FINISHED, {"run_id": "r"})
    assert sub.offered == 1
    assert [(e.name, e.data) for e in sub.take()] == [(RUN_FINISHED, {"run_id": "r"})]


async def test_nobody_subscribed_means_nothing_is_done() -> None:
    encoder = CountingEncoder()
    hub = EventHub(encoder)
    assert not any(hub.wants(name) for name in EVENT_NAMES)
    hub.publish(RUN_FINISHED, {"run_id": "r"})
    sub = hub.subscribe()
    sub.close()
    assert not hub.wants(RUN_FINISHED) and hub.subscriber_count == 0
    assert encoder.calls == 0


async def test_an_event_is_encoded_once_and_every_subscriber_gets_the_same_bytes() -> None:
    encoder = CountingEncoder()
    hub = EventHub(encoder)
    everything, finished = hub.subscribe(), hub.subscribe(events=frozenset({RUN_FINISHED, RUN_STARTED}))
    for i in range(50):
        hub.publish(RUN_FINISHED, {"run_id": f"r{i}", "seconds": 0.5})
    a, b = everything.take(), finished.take()
    frames_a, frames_b = [e.frame() for e in a], [e.frame() for e in b]
    assert encoder.calls == 50  # not 100: once per event, whatever the number of subscribers
    assert all(x is y for x, y in zip(frames_a, frames_b, strict=True))  # the very same bytes object
    assert frames_a[7] == socket_frame(RUN_FINISHED, {"run_id": "r7", "seconds": 0.5})


async def test_unknown_kinds_reach_only_subscribers_of_everything() -> None:
    hub = EventHub()
    everything, filtered = hub.subscribe(), hub.subscribe(events=frozenset({RUN_FINISHED}))
    hub.publish("guard.tripped", {"action": "quarantine_file"})
    assert [e.name for e in everything.take()] == ["guard.tripped"]
    assert filtered.offered == 0


async def test_lagged_comes_first_in_a_batch_and_memory_stays_bounded() -> None:
    hub = EventHub()
    slow = hub.subscribe(maxsize=10)
    for i in range(1000):
        hub.publish(STEP_FINISHED, {"i": i})
    batch = slow.take()
    assert (batch[0].name, batch[0].data) == (LAGGED, {"missed": 990})
    assert [e.data["i"] for e in batch[1:]] == list(range(10))
    assert slow.take() == []


async def test_an_unencodable_event_is_skipped_for_every_subscriber_and_logged_once(caplog: Any) -> None:
    hub = EventHub()
    a, b = hub.subscribe(), hub.subscribe()
    hub.publish(RUN_FINISHED, {"result": object()})
    assert a.take()[0].frame() is None
    assert b.take()[0].frame() is None
    assert len([r for r in caplog.records if "cannot be sent" in r.message]) == 1


async def test_a_burst_is_gathered_into_one_batch_and_an_event_after_a_quiet_spell_goes_at_once() -> None:
    hub = EventHub()
    sub = hub.subscribe()
    hub.publish(RUN_STARTED, {"i": 0})
    first = await asyncio.wait_for(sub.batch(60.0), 10)  # nothing went out for a window: handed over at once
    assert [e.data["i"] for e in first or []] == [0]
    later = asyncio.ensure_future(sub.batch(0.05))
    for i in range(1, 4):
        hub.publish(RUN_STARTED, {"i": i})
        await asyncio.sleep(0)  # the reader runs between the publishes, and still waits for the window
    assert [e.data["i"] for e in await asyncio.wait_for(later, 10) or []] == [1, 2, 3]
    sub.close()
    assert await sub.batch(0.05) is None


def test_a_frame_holds_the_same_bytes_as_the_protocol_encoder_for_hostile_data() -> None:
    hostile = [{}, {"file_path": "/tmp/bad-\udcff\udcfe.exe", "nested": {"list": [1, None, 2.5, "é"]}},
               {"run_id": "r", "status": "completed", "seconds": 0.25, "error": None}, {"nul": "a\x00b"}]
    for name in (*sorted(EVENT_NAMES), "a.kind.the.hub.does.not.know"):
        for data in hostile:
            frame = socket_frame(name, data)
            assert frame == encode(event_message(name, data))
            assert decode(frame[4:]) == {"event": name, "data": msgpack.unpackb(encode(data)[4:])}
    view = {"x": 1}.items().mapping  # a Mapping that is not a dict goes the general way, with the same bytes
    assert socket_frame(RUN_STARTED, view) == encode(event_message(RUN_STARTED, {"x": 1}))
    with pytest.raises(FrameTooLarge, match="exceeds"):
        socket_frame(STEP_FINISHED, {"error": "x" * MAX_FRAME})


def test_the_hubs_own_encoder_gives_the_protocols_bytes_and_recovers_from_a_failed_pack() -> None:
    encode_frame = frame_encoder()
    hostile = [{}, {"file_path": "/tmp/bad-\udcff\udcfe.exe", "nested": {"list": [1, None, 2.5, "é"]}},
               {"run_id": "r", "status": "completed", "seconds": 0.25, "error": None}, {"nul": "a\x00b"},
               {"x": 1}.items().mapping]
    for name in (*sorted(EVENT_NAMES), "a.kind.the.hub.does.not.know"):
        for data in hostile:
            assert encode_frame(name, data) == encode(event_message(name, dict(data)))
    # A value msgpack cannot take fails half-way through a map: the next frame must not carry its remains.
    with pytest.raises(TypeError):
        encode_frame(RUN_STARTED, {"run_id": "r1", "oops": object()})
    assert encode_frame(RUN_STARTED, {"run_id": "r2"}) == encode(event_message(RUN_STARTED, {"run_id": "r2"}))
    with pytest.raises(FrameTooLarge, match="exceeds"):
        encode_frame(STEP_FINISHED, {"error": "x" * MAX_FRAME})
    assert encode_frame(STEP_FINISHED, {"error": None}) == encode(event_message(STEP_FINISHED, {"error": None}))
    assert EventHub().encoder is not EventHub().encoder  # each hub (one thread) has a Packer of its own


async def test_a_reader_woken_by_the_first_event_of_a_burst_gets_all_of_it_and_waits_again_when_empty() -> None:
    hub = EventHub()
    sub = hub.subscribe(maxsize=3)
    reader = asyncio.ensure_future(sub.batch(0.0))
    await asyncio.sleep(0)  # the reader waits on the empty queue
    for i in range(5):  # only the first wakes it; two are dropped
        hub.publish(RUN_STARTED, {"i": i})
    batch = await asyncio.wait_for(reader, 10) or []
    assert [(e.name, e.data) for e in batch] == [(LAGGED, {"missed": 2})] + [(RUN_STARTED, {"i": i}) for i in range(3)]
    reader = asyncio.ensure_future(sub.batch(0.0))
    for _ in range(3):  # loop turns, not time: the reader has had every chance to run
        await asyncio.sleep(0)
    assert not reader.done()  # empty now: it waits
    hub.publish(RUN_FINISHED, {"i": 9})
    assert [e.data for e in await asyncio.wait_for(reader, 10) or []] == [{"i": 9}]
    sub.close()
