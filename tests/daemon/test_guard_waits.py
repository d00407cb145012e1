"""No confirmed work is dropped by a guard (issue 13, part 2), through the real daemon: a quarantine over its
rate limit waits for a slot instead of failing; the wait is on disk (it survives a kill -9 and the restart puts
the step back in line, in the order it began waiting); it shows in `sddctl status`, `history` and `show`; and
the limit's window survives the restart too, so the restart lets no burst through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.api.live import sddctl
from tests.support.daemon import DaemonProcess

N = 6
LIMIT, WINDOW = 2, 4.0


def _workflow() -> dict[str, Any]:
    return {"workflow_id": "contain", "trigger": {"type": "malware"},
            "steps": [{"step_id": "quarantine", "action": "quarantine_file", "timeout": 300,
                       "params": {"file_path": "{{ detection.file_path }}"}}]}


def _waiting_rows(d: DaemonProcess) -> list[tuple[float, str]]:
    rows = d.query("SELECT run_id, result FROM steps WHERE status = 'waiting' AND step_id = 'quarantine'")
    return sorted((json.loads(r["result"])["since"], r["run_id"]) for r in rows)


def _guards(d: DaemonProcess) -> dict[str, Any]:
    with d.client() as c:
        return c.call("status")["guards"]


def test_waits_over_a_rate_limit_survive_kill9_and_lift_in_order(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, workflows={"contain": _workflow()},
                      config_overrides={"actions": {"rate_limits": {"quarantine_file": [LIMIT, WINDOW]}}})
    area = d.root / "infected"
    area.mkdir()
    files = [area / f"f{i}.exe" for i in range(N)]
    try:
        d.start()
        for i, f in enumerate(files):
            f.write_bytes(b"EVIL %d" % i)
            d.drop({"type": "malware", "file_path": str(f), "threat_name": "Test.Sig"})
        d.wait_for(lambda: _guards(d)["waiting"].get("quarantine_file") == N - LIMIT, timeout=60,
                   what="the steps over the limit waiting")
        waiting = _waiting_rows(d)
        assert len(waiting) == N - LIMIT, "each wait is on disk before the step is seen waiting"

        status = sddctl(d, "status")
        assert f"{N - LIMIT} step(s) for quarantine_file" in status.stdout, status.stdout
        history = json.loads(sddctl(d, "--json", "history").stdout)
        held = [r for r in history["items"] if r.get("waiting")]
        assert len(held) == N - LIMIT and all(r["waiting"]["action"] == "quarantine_file" for r in held)
        assert "waiting" in sddctl(d, "history").stdout
        shown = sddctl(d, "show", waiting[0][1])
        assert "waiting" in shown.stdout and "rate limit for quarantine_file reached" in shown.stdout, shown.stdout

        d.kill()
        assert _waiting_rows(d) == waiting, "the waits outlive the daemon"
        assert d.count("SELECT count(*) FROM quarantine") == LIMIT

        d.start()
        d.wait_for(lambda: d.count("SELECT count(*) FROM quarantine WHERE restored_at IS NULL") == N
                   and d.count("SELECT count(*) FROM runs WHERE status = 'completed'") == N,
                   timeout=120, what="every file in the vault")
        assert not any(f.exists() for f in files)
        assert d.count("SELECT count(*) FROM runs") == N, "no run started twice"
        # Lifted in the order they began waiting (FIFO across the restart), LIMIT at a time as the window frees
        # (the steps let through together race each other to the vault).
        order = [r["run_id"] for r in d.query("SELECT run_id FROM quarantine ORDER BY quarantined_at")]
        line = [run_id for _, run_id in waiting]
        assert [set(order[i:i + LIMIT]) for i in range(LIMIT, N, LIMIT)] == \
            [set(line[i:i + LIMIT]) for i in range(0, N - LIMIT, LIMIT)]
        # The window held across the restart: never more than LIMIT acts in any WINDOW (audit times are taken
        # just after each act, hence the margin).
        times = [r[0] for r in d.query("SELECT time FROM audit WHERE action = 'quarantine_file' ORDER BY time")]
        assert len(times) == N
        assert all(times[i + LIMIT] - times[i] >= WINDOW - 1.0 for i in range(N - LIMIT)), times
        assert _guards(d)["waiting"] == {}
    finally:
        d.close()


def test_a_rate_limit_trip_is_logged_once_and_streamed(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, workflows={"contain": _workflow()},
                      config_overrides={"actions": {"rate_limits": {"quarantine_file": [1, 3600]}}})
    area = d.root / "infected"
    area.mkdir()
    try:
        d.start()
        with d.client() as c:
            stream = c.subscribe(["step.waiting", "guard.tripped"])
            for i in range(4):
                f = area / f"t{i}.exe"
                f.write_bytes(b"EVIL %d" % i)
                d.drop({"type": "malware", "file_path": str(f), "threat_name": "Test.Sig"})
            seen: dict[str, list[dict[str, Any]]] = {}
            for event in stream:
                seen.setdefault(event.name, []).append(event.data)
                if len(seen.get("step.waiting", [])) == 3 and seen.get("guard.tripped"):
                    break
        trips = seen.get("guard.tripped", [])
        assert len(trips) == 1 and trips[0]["guard"] == "rate_limit:quarantine_file" and trips[0]["limit"] == 1
        assert all(e["waiting"] and "rate limit for quarantine_file" in e["reason"] for e in seen["step.waiting"])
        d.wait_for(lambda: d.log().count("guard tripped") == 1, what="the trip's log line")
        d.wait_for(lambda: d.count("SELECT count(*) FROM audit WHERE action = 'guard.tripped'") == 1,
                   what="the trip's audit row")
        assert d.log().count("guard tripped") == 1
    finally:
        d.close()


def test_a_run_held_by_a_guard_does_not_take_a_run_slot(tmp_path: Path) -> None:
    """max_concurrent_runs = 1: while a delete waits for its rate limit, the next detection still runs."""
    guarded = {"workflow_id": "guarded", "trigger": {"type": "delete-me"},
               "steps": [{"step_id": "delete", "action": "delete_file", "timeout": 300,
                          "params": {"file_path": "{{ detection.file_path }}"}}]}
    other = {"workflow_id": "other", "trigger": {"type": "tell-me"},
             "steps": [{"step_id": "tell", "action": "send_notification",
                        "params": {"channel": "log", "message": "hello"}}]}
    d = DaemonProcess(tmp_path, workflows={"guarded": guarded, "other": other},
                      config_overrides={"engine": {"max_concurrent_runs": 1},
                                        "actions": {"rate_limits": {"delete_file": [1, 3600]}}})
    area = d.root / "infected"
    area.mkdir()
    try:
        d.start()
        for i in range(2):
            f = area / f"d{i}.exe"
            f.write_bytes(b"EVIL")
            d.drop({"type": "delete-me", "file_path": str(f)})
        d.wait_for(lambda: _guards(d)["waiting"].get("delete_file") == 1, what="the second delete waiting")
        d.drop({"type": "tell-me"})
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE workflow_id = 'other' AND status = 'completed'"),
                   what="the other run, beside the waiting one")
        assert d.count("SELECT count(*) FROM steps WHERE status = 'waiting'") == 1
    finally:
        d.close()


def test_a_breaker_that_opens_is_one_trip_on_the_stream(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on: every call is refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hook = {"workflow_id": "hook", "trigger": {"type": "malware"},
            "steps": [{"step_id": "post", "type": "webhook", "max_retries": 0, "on_failure": "continue",
                       "params": {"url": f"http://127.0.0.1:{port}/alert", "payload": {"x": 1}}}]}
    d = DaemonProcess(tmp_path, workflows={"hook": hook}, config_overrides={"actions": {"breaker_failures": 2}})
    try:
        d.start()
        with d.client() as c:
            stream = c.subscribe(["guard.tripped", "run.finished"])
            for i in range(5):
                d.drop({"type": "malware", "file_path": f"/tmp/b{i}"})
            trips, finished = [], 0
            for event in stream:
                if event.name == "guard.tripped":
                    trips.append(event.data)
                finished += event.name == "run.finished"
                if finished == 5:
                    break
        assert [t["guard"] for t in trips] == [f"breaker:webhook:127.0.0.1:{port}"]
        assert "opened after 2 consecutive failures" in trips[0]["reason"]
    finally:
        d.close()
