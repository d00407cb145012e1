"""Refused calls cannot grow the audit log (issue 10.5), and `[api] socket_mode = "0666"` opens the socket
to everyone while the authorisation table decides (issue 11): a real `nobody` client, a real daemon."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import pytest
from sdd_client.client import Client
from sdd_client.errors import ApiError

from .conftest import SYSTEM_PYTHON, why_no_other_user
from .live import start_daemon

NOBODY = "uid:65534"


def as_nobody(d, probe_path, script: str, *args: str) -> dict:
    argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", SYSTEM_PYTHON, "-E", "-s",
            "-S", str(probe_path / script), str(d.socket), *args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin"},
                       check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def open_daemon(tmp_path):
    d = start_daemon(tmp_path, {"api": {"socket_mode": "0666", "socket_group": "staff", "read_groups": ["users"]}},
                     user_mode=False)
    try:
        os.chmod(d.runtime, 0o711)  # the test's private runtime directory; the socket's own mode is sdd's
        yield d
    finally:
        d.close()


@pytest.mark.skipif(why_no_other_user() is not None, reason=why_no_other_user() or "")
def test_a_world_open_socket_still_gives_others_only_ping(open_daemon, probe_path):
    assert stat.S_IMODE(os.lstat(open_daemon.socket).st_mode) == 0o666  # as configured, set by sdd itself
    result = as_nobody(open_daemon, probe_path, "peer_probe.py")
    assert {m for m, outcome in result.items() if outcome != "forbidden"} == {"ping"}


@pytest.mark.skipif(why_no_other_user() is not None, reason=why_no_other_user() or "")
def test_a_flood_of_refused_calls_is_audited_as_one_row_per_method_and_minute(open_daemon, probe_path):
    d = open_daemon
    started = time.time()
    assert as_nobody(d, probe_path, "refusal_flood.py", "runs.start", "3000") == {"forbidden": 3000}
    assert as_nobody(d, probe_path, "refusal_flood.py", "status", "500") == {"forbidden": 500}
    minutes = int(time.time() // 60) - int(started // 60) + 1  # the flood may straddle a minute boundary
    d.wait_for(lambda: d.count("SELECT count(*) FROM audit WHERE actor = ? AND action = 'api.status'", (NOBODY,)),
               what="the refused status calls' row")
    rows = d.query("SELECT action, outcome, target, details FROM audit WHERE actor = ? ORDER BY id", (NOBODY,))
    by_action: dict[str, list] = {}
    for row in rows:
        by_action.setdefault(row["action"], []).append(row)
    assert set(by_action) == {"api.runs.start", "api.status"}
    assert 1 <= len(by_action["api.runs.start"]) <= minutes and 1 <= len(by_action["api.status"]) <= minutes
    first = json.loads(by_action["api.runs.start"][0]["details"])
    assert first["uid"] == 65534 and by_action["api.runs.start"][0]["outcome"] == "refused:forbidden"
    # The counts are written as they grow (at powers of two) and when the minute ends or sdd stops.
    d.stop()
    rows = d.query("SELECT action, details FROM audit WHERE actor = ? ORDER BY id", (NOBODY,))
    totals: dict[str, int] = {}
    for row in rows:
        details = json.loads(row["details"])
        totals[row["action"]] = totals.get(row["action"], 0) + details["count"]
        assert details["last"] >= details["first"]
    assert totals == {"api.runs.start": 3000, "api.status": 500}
    targets = {t for row in rows if row["action"] == "api.runs.start" for t in json.loads(row["details"])["targets"]}
    assert targets == {f"wf-{i}" for i in range(7)}  # a bounded sample of what was asked for


def test_out_of_range_numbers_from_a_client_are_refused_like_nan(tmp_path):
    d = start_daemon(tmp_path)
    try:
        with Client(d.socket) as c:  # msgpack carries infinities; JSON, and so sdd, does not
            for detection in ({"type": "malware", "x": float("inf")}, {"type": "malware", "x": [float("nan")]}):
                with pytest.raises(ApiError) as err:
                    c.call("detections.submit", detection=detection)
                assert err.value.code == "invalid_params" and "out of range" in err.value.message
            with pytest.raises(ApiError) as err:
                c.call("runs.start", workflow_id="notify3", context={"limit": {"n": float("-inf")}})
            assert err.value.code == "invalid_params" and "params.context.limit.n" in err.value.message
            with pytest.raises(ApiError) as err:
                c.call("runs.start", workflow_id="contain", detection={"type": "malware", "size": float("inf")})
            assert err.value.code == "invalid_params" and "out of range" in err.value.message
            assert c.call("runs.list")["items"] == [] and c.call("detections.list")["items"] == []
            # The positive control: finite numbers pass.
            assert c.call("detections.submit", detection={"type": "nothing", "x": 1.5e308})["state"] == "queued"
    finally:
        d.close()
