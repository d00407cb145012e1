"""Rate limits and circuit breakers, driven by a fake clock (no sleeping)."""

from __future__ import annotations

import pytest

from sdd.actions import BreakerOpen, BreakerState, Guards, RateLimited
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
                                                         "available": 0}


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
