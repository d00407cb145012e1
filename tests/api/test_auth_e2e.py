"""Authorisation with real unprivileged users: the probe runs as `nobody` (setpriv) with no group, a
read group, or the socket group, against a system-mode daemon, and every method is checked against the
contract's rules."""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess

import pytest

from .conftest import SYSTEM_PYTHON, why_no_other_user
from .live import start_daemon

READ = {"ping", "status", "workflows.list", "workflows.get", "runs.list", "runs.get", "runs.stats",
        "detections.list", "detections.get", "quarantine.list", "subscribe"}
ALL = READ | {"workflows.validate", "runs.start", "runs.cancel", "detections.submit", "quarantine.restore", "reload"}


pytestmark = pytest.mark.skipif(why_no_other_user() is not None, reason=why_no_other_user() or "")


@pytest.fixture(scope="module")
def system_daemon(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("auth"), {"api": {"socket_group": "staff", "read_groups": ["users"]}},
                     user_mode=False)
    try:
        # The test makes the socket reachable to every user; the daemon's own rules must do the rest.
        os.chmod(d.runtime, 0o711)
        mode = stat.S_IMODE(os.lstat(d.socket).st_mode)
        assert mode == 0o660 and os.lstat(d.socket).st_gid == grp.getgrnam("staff").gr_gid
        os.chmod(d.socket, 0o666)
        yield d
    finally:
        d.close()


def probe(d, probe_path, *setpriv_args: str) -> dict[str, str]:
    argv = ["setpriv", "--reuid=nobody", *setpriv_args, "--", SYSTEM_PYTHON, "-E", "-s", "-S",
            str(probe_path / "peer_probe.py"), str(d.socket)]
    # -E -s -S: no PYTHON* variables, no user site, no site-packages; the probe's own directory (first on sys.path) holds its two packages.
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"},
                       check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_nobody_without_groups_may_only_ping(system_daemon, probe_path):
    result = probe(system_daemon, probe_path, "--regid=nogroup", "--clear-groups")
    assert set(result) == ALL
    assert {m for m, outcome in result.items() if outcome != "forbidden"} == {"ping"}
    assert result["ping"] == "ok"


def test_read_group_member_may_read_but_not_change(system_daemon, probe_path):
    result = probe(system_daemon, probe_path, "--regid=nogroup", f"--groups={grp.getgrnam('users').gr_gid}")
    assert {m for m, outcome in result.items() if outcome != "forbidden"} == READ
    assert result["status"] == result["subscribe"] == result["runs.list"] == "ok"
    assert result["runs.get"] == "not_found"


def test_read_group_as_primary_group_counts_too(system_daemon, probe_path):
    result = probe(system_daemon, probe_path, "--regid=users", "--clear-groups")
    assert {m for m, outcome in result.items() if outcome != "forbidden"} == READ


def test_socket_group_member_may_call_everything(system_daemon, probe_path):
    for args in (("--regid=nogroup", f"--groups={grp.getgrnam('staff').gr_gid}"), ("--regid=staff", "--clear-groups")):
        result = probe(system_daemon, probe_path, *args)
        assert "forbidden" not in result.values(), (args, result)
        assert result["reload"] == "ok" and result["runs.start"] == "not_found"
        assert result["detections.submit"] == "invalid_params"


def test_refused_calls_are_audited_with_the_callers_uid(system_daemon, probe_path):
    probe(system_daemon, probe_path, "--regid=nogroup", "--clear-groups")
    nobody = f"uid:{65534}"
    system_daemon.wait_for(lambda: system_daemon.count(
        "SELECT count(*) FROM audit WHERE actor = ? AND action = 'api.reload' AND outcome = 'refused:forbidden'",
        (nobody,)), what="audit of nobody's refused reload")
