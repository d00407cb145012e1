"""The coalescing of refused calls (sdd/api/refusals.py) on its own, with a clock the test moves: one row per
(uid, method, outcome) and minute, at most MAX_KEYS rows a minute, counts written as they grow and at the
end of the minute."""

from __future__ import annotations

from sdd.api.refusals import RefusalAudit

from .fakes import RecordingStore


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_one_row_per_uid_method_outcome_and_minute_with_its_count() -> None:
    store, clock = RecordingStore(), Clock(6000.0)
    audit = RefusalAudit(lambda: store, clock=clock)
    for _ in range(5):
        await audit.refused(1000, 1, "reload", "refused:forbidden", "no", None)
    await audit.refused(1000, 1, "runs.start", "refused:forbidden", "no", "wf")
    await audit.refused(1001, 2, "reload", "refused:forbidden", "no", None)
    assert [(a["actor"], a["action"]) for a in store.audits] == [
        ("uid:1000", "api.reload"), ("uid:1000", "api.runs.start"), ("uid:1001", "api.reload")]
    assert store.audits[0]["details"]["count"] == 4  # written at 2 and 4, as it grew
    clock.now += 60  # the next minute opens a row of its own
    await audit.refused(1000, 1, "reload", "refused:forbidden", "no", None)
    await audit.close()
    assert len(store.audits) == 4 and store.audits[0]["details"]["count"] == 5
    assert store.audits[3]["details"]["count"] == 1


async def test_past_the_key_bound_refusals_fold_into_one_row_per_outcome() -> None:
    store, clock = RecordingStore(), Clock(6000.0)
    audit = RefusalAudit(lambda: store, clock=clock, max_keys=3)
    for uid in range(10):
        await audit.refused(uid, 1, "reload", "refused:forbidden", "no", None)
    await audit.close()
    assert [a["actor"] for a in store.audits] == ["uid:0", "uid:1", "uid:2", "uid:*"]
    folded = store.audits[3]
    assert folded["action"] == "api.*" and folded["details"]["count"] == 7 and folded["details"]["uid"] is None
