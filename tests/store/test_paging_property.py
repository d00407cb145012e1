"""Property: walking the pages of list_runs with any filters yields exactly the filtered runs, newest first,
each once — whatever the ties in start times and the page size."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdd.store import Store
from sdd.store.writes import finish_run_op

STATUSES = ["running", "completed", "failed", "rolled_back"]
run_spec = st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(STATUSES), st.integers(0, 6))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs=st.lists(run_spec, max_size=40), limit=st.integers(1, 9),
       workflow=st.none() | st.sampled_from(["a", "b", "z"]), status=st.none() | st.sampled_from(STATUSES),
       since=st.none() | st.integers(0, 6), until=st.none() | st.integers(0, 7))
def test_pages_are_exactly_the_filtered_runs(runs: list[tuple[str, str, int]], limit: int, workflow: str | None,
                                             status: str | None, since: int | None, until: int | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "sdd.db")
        try:
            for i, (wf, st_, started) in enumerate(runs):
                run_id = f"r{(i * 7919) % 1000:03d}-{i}"  # ids not in insertion order
                store.write_sync(store.create_run_op(run_id, wf, started_at=float(started)))
                if st_ != "running":
                    store.write_sync(finish_run_op(run_id, st_, None, float(started) + 1, None))
            expected = sorted(
                ((float(started), f"r{(i * 7919) % 1000:03d}-{i}") for i, (wf, st_, started) in enumerate(runs)
                 if (workflow is None or wf == workflow) and (status is None or st_ == status)
                 and (since is None or started >= since) and (until is None or started < until)),
                reverse=True)
            got: list[tuple[float, str]] = []
            cursor = None
            for _ in range(100):
                page = store.list_runs(limit=limit, cursor=cursor, workflow_id=workflow, status=status,
                                       since=since, until=until)
                assert len(page.items) <= limit
                got.extend((r["started_at"], r["run_id"]) for r in page.items)
                cursor = page.cursor
                if cursor is None:
                    break
            assert got == expected
        finally:
            store.close()
