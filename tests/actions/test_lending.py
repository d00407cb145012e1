"""`lending.Lane` (the scans at once) and `lending.lent` (a waiting step's run lends its slot)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sdd.actions import lending
from sdd.actions.lending import Lane, lent


async def _enter(lane: Lane, order: list[int], i: int, leave: asyncio.Event) -> None:
    async with lane:
        order.append(i)
        await leave.wait()


def _callers(lane: Lane, n: int) -> tuple[list[int], list[asyncio.Event], list[asyncio.Task[None]]]:
    """`n` callers entering `lane` in turn: the order they got in, the event that lets each leave, their tasks."""
    order: list[int] = []
    leave = [asyncio.Event() for _ in range(n)]
    return order, leave, [asyncio.create_task(_enter(lane, order, i, leave[i])) for i in range(n)]


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_lane_lets_its_limit_in_and_the_rest_in_their_order() -> None:
    lane = Lane(2)
    order, leave, tasks = _callers(lane, 5)
    await _settle()
    assert order == [0, 1] and (lane.busy, lane.waiting) == (2, 3)
    leave[1].set()
    await _settle()
    assert order == [0, 1, 2] and (lane.busy, lane.waiting) == (2, 2)
    for e in leave:
        e.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4] and (lane.busy, lane.waiting) == (0, 0)


async def test_a_lane_s_limit_may_change_while_callers_wait() -> None:
    lane = Lane(1)
    order, leave, tasks = _callers(lane, 4)
    await _settle()
    assert order == [0]
    lane.set_limit(3)  # raised: two of those waiting go in at once
    await _settle()
    assert order == [0, 1, 2] and lane.waiting == 1
    lane.set_limit(1)  # lowered: no one goes in until only one is left inside
    leave[0].set()
    leave[1].set()
    await _settle()
    assert order == [0, 1, 2] and lane.busy == 1
    leave[2].set()
    await _settle()
    assert order == [0, 1, 2, 3]
    leave[3].set()
    await asyncio.gather(*tasks)
    assert lane.busy == 0


async def test_a_caller_cancelled_in_line_or_just_let_in_gives_its_place_to_the_next() -> None:
    lane = Lane(1)
    await lane.__aenter__()  # the test holds the place
    order, leave, tasks = _callers(lane, 3)
    await _settle()
    assert (lane.busy, lane.waiting) == (1, 3)
    tasks[0].cancel()        # cancelled while waiting in line
    await _settle()
    assert tasks[0].cancelled() and (lane.busy, lane.waiting) == (1, 2)
    await lane.__aexit__(None, None, None)  # the place goes to 1 ...
    tasks[1].cancel()        # ... cancelled before it could run: the place is not lost, 2 gets it
    await _settle()
    assert tasks[1].cancelled()
    assert order == [2] and (lane.busy, lane.waiting) == (1, 0)
    leave[2].set()
    await tasks[2]
    assert (lane.busy, lane.waiting) == (0, 0)


async def test_a_wait_lends_its_run_s_slot_only_past_lend_after(monkeypatch: pytest.MonkeyPatch) -> None:
    from sdd.engine.registry import _current_step

    calls: list[tuple[str, bool]] = []
    told = asyncio.Event()

    def on_outbound(run_id: str, waiting: bool) -> None:
        calls.append((run_id, waiting))
        told.set()

    monkeypatch.setattr(lending, "LEND_AFTER", 0.05)
    # (what the runner stores: StepInfo's fields, in order)
    token = _current_step.set(("run-1", "wf", "scan", 1, "run-1:scan", {}, False, "run", None, {}))
    try:
        async with lent(on_outbound):
            pass                    # a wait that ends at once lends nothing
        assert calls == []
        done = asyncio.Event()

        async def held() -> None:
            async with lent(on_outbound):
                await done.wait()
        task = asyncio.create_task(held())
        await asyncio.wait_for(told.wait(), 10)  # the lending timer fires
        assert calls == [("run-1", True)]
        done.set()
        await task
        assert calls == [("run-1", True), ("run-1", False)]
    finally:
        _current_step.reset(token)


def test_the_scans_at_once_follow_max_concurrent_runs_up_to_half_the_executor_s_places(tmp_path: Path) -> None:
    from sdd.actions.services import ActionServices
    from sdd.config import ActionsConfig
    from sdd.executor.protocol import MAX_INFLIGHT

    services = ActionServices(ActionsConfig(), tmp_path)
    services.set_max_runs(4)
    assert services.scans.limit == 4
    services.set_max_runs(1000)  # a scan holds its place in the executor for its whole length
    assert services.scans.limit == MAX_INFLIGHT // 2 == 32
