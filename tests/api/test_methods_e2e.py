"""Every API method against a real daemon: results, parameter checking, paging, audit, subscribe."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from sdd_client.client import Client
from sdd_client.errors import ApiError

TERMINAL = {"completed", "failed", "rolled_back", "cancelled", "interrupted"}


@pytest.fixture
def client(live):
    with Client(live.socket, timeout=30) as c:
        yield c


def finished(client, run_id, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        run = client.call("runs.get", run_id=run_id)
        if run["status"] in TERMINAL:
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run['status']}"
        time.sleep(0.02)


def api_error(fn, *args, **kw) -> ApiError:
    with pytest.raises(ApiError) as err:
        fn(*args, **kw)
    return err.value


def test_ping_and_status(client, live):
    assert client.call("ping") == {"pong": True}
    status = client.call("status")
    assert status["state"] == "running" and status["pid"] == live.pid
    assert status["api"]["access"] == "admin"


def test_workflows_list_and_get(client):
    items = {w["workflow_id"]: w for w in client.call("workflows.list")["items"]}
    assert set(items) == {"notify3", "blocking", "failing", "contain", "chatty"}
    assert items["notify3"]["steps"] == 3 and items["notify3"]["trigger"]["types"] == ["note"]
    wf = client.call("workflows.get", workflow_id="notify3")
    assert [s["step_id"] for s in wf["steps"]] == ["first", "second", "third"]
    assert wf["source"].endswith("notify3.yaml")
    assert api_error(client.call, "workflows.get", workflow_id="nope").code == "not_found"
    err = api_error(client.call, "workflows.get")
    assert err.code == "invalid_params" and "workflow_id" in err.message


def test_workflows_validate_reports_issues_with_location(client):
    ok = client.call("workflows.validate", text="workflow_id: x\nsteps:\n  - step_id: a\n    action: send_notification\n"
                                                "    params: {message: hi, channel: log}\n", name="x.yaml")
    assert ok["valid"] is True and ok["workflow_id"] == "x"
    bad = client.call("workflows.validate", text="workflow_id: y\nsteps:\n  - step_id: a\n    action: no_such_action\n",
                      name="y.yaml")
    assert bad["valid"] is False and bad["errors"] and all(e.startswith("y.yaml") for e in bad["errors"])
    err = api_error(client.call, "workflows.validate", text=12)
    assert err.code == "invalid_params" and "text" in err.message


def test_a_large_validation_does_not_hold_the_daemon(live):
    # Parsing costs ~45 µs a YAML node: on the event loop, this text (stopped at 100,000 nodes) held every
    # detection and client for seconds. Now the loop answers while it is parsed, in a thread.
    text = "a:\n" + "- 1\n" * 130_000
    reply = live.answers_during("workflows.validate", text=text, name="big.yaml")
    assert reply["valid"] is False
    [issue] = reply["issues"]
    # Composing stops at the 100,001st node (the mapping, its key and the list come first), on its line:
    assert issue["message"] == "the document is too large (more than 100000 values)" and issue["line"] == 99_999


def test_run_start_get_with_every_step(client):
    started = client.call("runs.start", workflow_id="notify3", context={"x": 42})
    run = finished(client, started["run_id"])
    assert run["status"] == "completed" and run["trigger"] == "api"
    steps = {s["step_id"]: s for s in run["steps"]}
    assert list(steps) == ["first", "second", "third"] or set(steps) == {"first", "second", "third"}
    for step in steps.values():
        assert step["status"] == "completed" and step["attempts"] == 1
        assert step["started_at"] <= step["finished_at"]
        assert "result" in step and "error" in step
    assert "42" in str(steps["second"]["params"])


def test_dry_run_returns_a_plan_and_starts_no_run(client):
    before = client.call("runs.list", workflow="notify3", limit=1000)["items"]
    result = client.call("runs.start", workflow_id="notify3", dry_run=True)
    assert result["dry_run"] is True and [p["step_id"] for p in result["plan"]] == ["first", "second", "third"]
    assert result["run_id"] is None and result["status"] == "planned"
    assert client.call("runs.list", workflow="notify3", limit=1000)["items"] == before


def test_runs_start_checks_its_params(client):
    for params, field in (({}, "workflow_id"), ({"workflow_id": "notify3", "context": [1]}, "context"),
                          ({"workflow_id": "notify3", "dry_run": "yes"}, "dry_run"),
                          ({"workflow_id": "notify3", "bogus": 1}, "bogus")):
        err = api_error(client.call_params, "runs.start", params)
        assert err.code == "invalid_params" and field in err.message, (params, err)
    assert api_error(client.call, "runs.start", workflow_id="missing").code == "not_found"


def test_failed_run_records_the_error(client):
    run = finished(client, client.call("runs.start", workflow_id="failing")["run_id"])
    assert run["status"] == "failed"
    boom = next(s for s in run["steps"] if s["step_id"] == "boom")
    assert boom["status"] == "failed" and boom["error"]


def test_cancel_a_running_run_then_conflict(client):
    run_id = client.call("runs.start", workflow_id="blocking")["run_id"]
    deadline = time.monotonic() + 30
    while client.call("runs.get", run_id=run_id)["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert client.call("runs.cancel", run_id=run_id) == {"run_id": run_id, "cancelled": True}
    assert finished(client, run_id)["status"] == "cancelled"
    assert api_error(client.call, "runs.cancel", run_id=run_id).code == "conflict"
    assert api_error(client.call, "runs.cancel", run_id="no-such-run").code == "not_found"


def test_runs_list_pages_and_filters(client):
    ids = [client.call("runs.start", workflow_id="notify3")["run_id"] for _ in range(5)]
    for run_id in ids:
        finished(client, run_id)
    seen, cursor = [], None
    while True:
        page = client.call("runs.list", limit=2, workflow="notify3", status="completed",
                           **({"cursor": cursor} if cursor else {}))
        assert len(page["items"]) <= 2
        seen += [r["run_id"] for r in page["items"]]
        assert all(r["workflow_id"] == "notify3" and r["status"] == "completed" for r in page["items"])
        cursor = page["cursor"]
        if cursor is None:
            break
    assert set(ids) <= set(seen) and len(seen) == len(set(seen))
    starts = [r["started_at"] for r in client.call("runs.list", limit=100)["items"]]
    assert starts == sorted(starts, reverse=True)
    assert client.call("runs.list", since=time.time() + 3600)["items"] == []
    assert client.call("runs.list", until="2000-01-01T00:00:00Z")["items"] == []
    for params, field in (({"limit": 0}, "limit"), ({"limit": "5"}, "limit"), ({"status": "done"}, "status"),
                          ({"since": "yesterday"}, "since"), ({"cursor": "garbage!"}, "cursor")):
        err = api_error(client.call_params, "runs.list", params)
        assert err.code == "invalid_params" and field in err.message, (params, err)


def test_runs_get_unknown_is_not_found(client):
    assert api_error(client.call, "runs.get", run_id="nope").code == "not_found"


def test_submit_list_detections_and_quarantine_restore(client, live):
    victim = live.root / "victim.bin"
    victim.write_bytes(b"malicious bytes")
    result = client.call("detections.submit", detection={"type": "malware", "severity": "high",
                                                         "file_path": str(victim), "threat_name": "Test.Threat"})
    detection_id = result["detection_id"]
    deadline = time.monotonic() + 60
    while victim.exists() or not client.call("quarantine.list")["items"]:
        assert time.monotonic() < deadline, "quarantine did not happen"
        time.sleep(0.05)
    detections = client.call("detections.list", type="malware")["items"]
    assert any(d["detection_id"] == detection_id for d in detections)
    entry = next(q for q in client.call("quarantine.list")["items"] if q["original_path"] == str(victim))
    assert api_error(client.call, "quarantine.restore", id=entry["id"], on_conflict="explode").code == "invalid_params"
    assert api_error(client.call, "quarantine.restore", id="nope").code == "not_found"
    client.call("quarantine.restore", id=entry["id"])
    assert victim.read_bytes() == b"malicious bytes"
    assert entry["id"] not in [q["id"] for q in client.call("quarantine.list", restored=False)["items"]]
    err = api_error(client.call, "detections.submit", detection={"severity": "high"})
    assert err.code == "invalid_params" and "type" in err.message


def test_runs_stats_per_workflow(client):
    finished(client, client.call("runs.start", workflow_id="notify3")["run_id"])
    stats = {s["workflow_id"]: s for s in client.call("runs.stats")["items"]}
    notify = stats["notify3"]
    assert notify["runs"] >= 1 and notify["completed"] >= 1
    for key in ("failed", "rolled_back", "mean_duration", "p95_duration", "last_run"):
        assert key in notify


def test_reload_keeps_workflows(client):
    result = client.call("reload")
    assert result["ok"] is True and result["workflows"] == 5


def test_state_changes_and_refusals_are_audited_with_uid(client, live):
    client.call("reload")
    api_error(client.call, "runs.cancel", run_id="audit-probe")
    me = f"uid:{os.getuid()}"
    live.wait_for(lambda: live.count("SELECT count(*) FROM audit WHERE actor = ? AND action = 'reload'", (me,)),
                  what="reload audit record")
    # Coalesced per uid, method, outcome and minute: another test's refused cancel may have opened the row;
    # this one's target then joins the row's sample at once.
    live.wait_for(lambda: live.count(
        "SELECT count(*) FROM audit, json_each(audit.details, '$.targets') WHERE actor = ? "
        "AND action = 'api.runs.cancel' AND outcome = 'refused:not_found' AND json_each.value = 'audit-probe'",
        (me,)), what="refused cancel audit record")


def test_subscribe_streams_run_events(client, live):
    with Client(live.socket).subscribe() as events:
        run_id = client.call("runs.start", workflow_id="notify3")["run_id"]
        seen = []
        events.settimeout(60)
        for event in events:
            if event.data.get("run_id") == run_id:
                seen.append((event.name, event.data.get("step_id")))
            if event.name == "run.finished" and event.data.get("run_id") == run_id:
                assert event.data["status"] == "completed"
                break
    assert ("run.started", None) in seen
    assert [s for n, s in seen if n == "step.finished"] == ["first", "second", "third"]


def test_slow_subscriber_gets_lagged_and_the_daemon_carries_on(client, live):
    with Client(live.socket).subscribe(queue=10) as slow:
        # The slow reader reads nothing while runs produce far more events than its queue and the socket
        # buffers hold (about 600 KB of frames).
        ids = [client.call("runs.start", workflow_id="chatty")["run_id"] for _ in range(10)]
        for run_id in ids:
            finished(client, run_id)
        slow.settimeout(60)
        got_lagged = False
        for event in slow:
            if event.name == "lagged":
                assert event.data["missed"] > 0
                got_lagged = True
                break
    assert got_lagged
    assert client.call("ping") == {"pong": True}


def test_many_concurrent_clients(live):
    errors = []

    def worker():
        try:
            with Client(live.socket, timeout=60) as c:
                for _ in range(5):
                    assert c.call("status")["state"] == "running"
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_sync_client_reconnects_when_the_daemon_dropped_the_connection(tmp_path):
    from .live import start_daemon

    d = start_daemon(tmp_path, {"api": {"idle_timeout": 0.2}})
    try:
        with Client(d.socket) as c:
            assert c.call("ping") == {"pong": True}
            c._sock.settimeout(30)
            assert c._sock.recv(1, socket.MSG_PEEK) == b""  # blocks until the daemon hangs up on us
            assert c.call("ping") == {"pong": True}
    finally:
        d.close()
