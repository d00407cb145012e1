"""Rate limits and circuit breakers, driven by a fake clock (no sleeping); waits for a slot, lifted by the
window passing (a short real window) or by a slot given back."""

from __future__ import annotations

import asyncio
import time

import pytest

from sdd.actions import BreakerOpen, BreakerState, Guards, RateLimited
from sdd.actions.guards import Trip
from sdd.config import RateLimit
from sdd.engine import Forbidden


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guards(clock: Clock, **limits: RateLimit) -> Guards:
    return Guards(limits, breaker_failures=3, breaker_reset=60.0, clock=clock)


def test_rate_limit_is_a_sliding_window() -> None:
    clock = Clock()
    g = guards(clock, kill_process=RateLimit(2, 60.0))
    g.acquire("kill_process")
    clock.now += 30
    g.acquire("kill_process")
    with pytest.raises(RateLimited, match=r"2 per 60 s\); next call allowed in 30.0 s"):
        g.acquire("kill_process")
    clock.now += 30.5
    g.acquire("kill_process")  # the first call left the window
    assert g.status()["rate_limits"]["kill_process"] == {"limit": 2, "per_seconds": 60.0, "used": 2,
                                                         "available": 0, "waiting": 0, "tripped_at": None}


def test_zero_rate_disables_the_action_and_unlisted_actions_are_free() -> None:
    g = guards(Clock(), delete_file=RateLimit(0, 60.0))
    with pytest.raises(Forbidden, match="disabled"):
        g.acquire("delete_file")
    for _ in range(1000):
        g.acquire("send_notification")


def test_breaker_opens_fails_fast_then_half_opens_for_one_trial() -> None:
    clock = Clock()
    g = guards(clock)
    for _ in range(3):
        g.before_call("webhook:h:80")
        g.record_failure("webhook:h:80", "HTTP 503")
    assert g.breaker_state("webhook:h:80") is BreakerState.OPEN
    with pytest.raises(BreakerOpen, match="3 consecutive failures \\(last: HTTP 503\\)"):
        g.before_call("webhook:h:80")
    clock.now += 60
    g.before_call("webhook:h:80")  # the one trial
    with pytest.raises(BreakerOpen):
        g.before_call("webhook:h:80")  # no second caller while the trial is out
    g.record_failure("webhook:h:80", "HTTP 503")
    assert g.status()["breakers"]["webhook:h:80"]["state"] == "open"
    clock.now += 60
    g.before_call("webhook:h:80")
    g.record_success("webhook:h:80")
    assert g.breaker_state("webhook:h:80") is BreakerState.CLOSED
    g.before_call("webhook:h:80")


def test_success_resets_the_failure_count() -> None:
    g = guards(Clock())
    for _ in range(2):
        g.record_failure("smtp:x:25", "refused")
    g.record_success("smtp:x:25")
    for _ in range(2):
        g.record_failure("smtp:x:25", "refused")
    g.before_call("smtp:x:25")


async def _take(g: Guards, action: str, order: list[str], name: str, *, use: bool = True, key: str = "") -> None:
    async with g.slot(action, key=key) as slot:
        order.append(name)
        if use:
            slot.use()


async def _until(predicate, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def _at_least(count, n: int) -> None:  # type: ignore[no-untyped-def]
    await _until(lambda: count() >= n, f"{n} steps served or in line")


async def test_a_full_window_makes_steps_wait_and_they_lift_in_fifo_order() -> None:
    trips: list[Trip] = []
    g = Guards({"quarantine_file": RateLimit(1, 0.05)}, 3, 60.0, on_trip=trips.append)
    order: list[str] = []
    await _take(g, "quarantine_file", order, "first")
    tasks = []
    for name in ("a", "b", "c", "d"):
        tasks.append(asyncio.ensure_future(_take(g, "quarantine_file", order, name)))
        await _at_least(lambda: g.status()["waiting"].get("quarantine_file", 0) + len(order), len(tasks) + 1)
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert order == ["first", "a", "b", "c", "d"]
    assert len(trips) == 1 and trips[0].guard == "rate_limit:quarantine_file" and trips[0].limit == 1
    assert g.status()["waiting"] == {} and g.status()["rate_limits"]["quarantine_file"]["tripped_at"] is None


async def test_an_unused_slot_goes_to_the_next_in_line_at_once() -> None:
    g = Guards({"delete_file": RateLimit(1, 3600.0)}, 3, 60.0)
    order: list[str] = []
    gate = asyncio.Event()

    async def holder() -> None:
        async with g.slot("delete_file"):
            order.append("holder")
            await gate.wait()  # leaves without acting (e.g. the file was already gone)

    first = asyncio.ensure_future(holder())
    await _until(lambda: order == ["holder"], "the holder's slot")
    second = asyncio.ensure_future(_take(g, "delete_file", order, "next"))
    await _until(lambda: g.status()["waiting"] == {"delete_file": 1}, "the second step to wait")
    gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert order == ["holder", "next"]
    assert g.status()["rate_limits"]["delete_file"]["used"] == 1


async def test_a_waiter_cancelled_by_its_timeout_leaves_the_line() -> None:
    g = Guards({"kill_process": RateLimit(1, 3600.0)}, 3, 60.0)
    g.acquire("kill_process")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_take(g, "kill_process", [], "late"), 0.05)
    assert g.status()["waiting"] == {}


async def test_a_sync_caller_is_refused_while_steps_wait() -> None:
    g = Guards({"kill_process": RateLimit(1, 3600.0)}, 3, 60.0)
    g.acquire("kill_process")
    waiter = asyncio.ensure_future(_take(g, "kill_process", [], "w"))
    await _until(lambda: g.status()["waiting"] == {"kill_process": 1}, "the waiter")
    with pytest.raises(RateLimited):
        g.acquire("kill_process")
    waiter.cancel()


def test_the_window_is_seeded_from_acts_before_a_restart() -> None:
    clock = Clock()
    g = Guards({"kill_process": RateLimit(2, 60.0)}, 3, 60.0, clock=clock, wall=lambda: 5000.0)
    g.seed([("kill_process", 4990.0), ("kill_process", 4900.0), ("delete_file", 4999.0)])  # 4900: out of window
    g.acquire("kill_process")
    with pytest.raises(RateLimited, match="next call allowed in 50.0 s"):
        g.acquire("kill_process")


async def test_steps_waiting_before_a_restart_keep_their_place_in_line() -> None:
    g = Guards({"quarantine_file": RateLimit(1, 3600.0)}, 3, 60.0)
    g.restore_waiters([(100.0, "old:q")])
    order: list[str] = []
    gate = asyncio.Event()

    async def holder() -> None:
        async with g.slot("quarantine_file"):
            order.append("holder")
            await gate.wait()

    first = asyncio.ensure_future(holder())
    await _until(lambda: order == ["holder"], "the holder")
    new = asyncio.ensure_future(_take(g, "quarantine_file", order, "new", key="new:q", use=False))
    await _until(lambda: g.status()["waiting"] == {"quarantine_file": 1}, "the new step to wait")
    old = asyncio.ensure_future(_take(g, "quarantine_file", order, "old", key="old:q", use=False))
    await _until(lambda: g.status()["waiting"] == {"quarantine_file": 2}, "the resumed step to wait")
    gate.set()
    await asyncio.wait_for(asyncio.gather(first, new, old), 10)
    assert order == ["holder", "old", "new"]


def test_a_breaker_trip_is_announced_once_until_it_closes() -> None:
    trips: list[Trip] = []
    g = Guards({}, 2, 60.0, clock=Clock(), on_trip=trips.append)
    for _ in range(5):
        g.record_failure("webhook:h:80", "HTTP 503")
    assert [t.guard for t in trips] == ["breaker:webhook:h:80"]
    g.record_success("webhook:h:80")
    for _ in range(2):
        g.record_failure("webhook:h:80", "HTTP 503")
    assert len(trips) == 2
