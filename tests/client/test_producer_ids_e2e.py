"""The producer's id goes everywhere (issue 11.6), and the newcomer's papercuts of sddctl, against a real
daemon: `submit` prints the id it wrote and `--wait` follows it; events, lists, `show` and `history` carry and
accept either id; run ids may be abbreviated; `watch`, `stats`, `quarantine list --all` and the help text say
what they mean."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from sdd_client import events as ev
from sdd_client.client import Client
from sdd_client.sddctl import build_parser

from tests.api.live import SDDCTL, sddctl, start_daemon, wait_run

SKIPPER = """workflow_id: skipper
steps:
  - step_id: never
    action: send_notification
    condition: "False"
    params: {message: never, channel: log}
  - step_id: once
    action: send_notification
    params: {message: once, channel: log}
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("ids"))
    try:
        d.write_workflow("skipper", SKIPPER)
        with Client(d.socket) as c:
            assert c.call("reload")["ok"]
        yield d
    finally:
        d.close()


def ok(d, *args, **kw) -> str:
    r = sddctl(d, *args, **kw)
    assert r.returncode == 0, f"sddctl {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def submit(d, *args: str, wait: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDD_")}
    env["SDD_SOCKET"] = str(d.socket)
    argv = [SDDCTL, "submit", "--spool", str(d.spool), *args] + (["--wait"] if wait else [])
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90, check=False, cwd=cwd)


def test_submit_prints_the_id_it_wrote_and_wait_follows_it_to_its_runs(live):
    r = submit(live, "--type", "note", "--id", "producer-7")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Queued detection producer-7 in ")
    assert re.fullmatch(r"  run [0-9a-f]{32} of notify3 completed after \S+", lines[1]), lines
    assert re.fullmatch(r"Detection \d+: 1 of 1 run\(s\) completed\.", lines[2]), lines
    # With no --id, one is made up, printed, and written.
    r = submit(live, "--type", "note", wait=False)
    made = re.match(r"Queued detection (\S+) in ", r.stdout).group(1)
    assert re.fullmatch(r"[0-9a-f-]{36}", made)
    with Client(live.socket) as c:
        deadline = time.monotonic() + 60
        while not c.call("runs.list", detection=made)["items"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_submit_wait_exits_1_unless_every_run_completed(live):
    r = submit(live, "--type", "nothing-matches-this")
    assert r.returncode == 1 and "matched no workflow" in r.stdout, r.stdout + r.stderr
    r = submit(live, "--type", "note", "--id", "producer-7")  # the id of the first test again
    assert r.returncode == 1 and "is a duplicate of detection" in r.stdout, r.stdout + r.stderr
    doc = json.loads(submit(live, "--json", "--type", "note", "--id", "json-1").stdout)
    assert doc["id"] == "json-1" and doc["state"] == "matched" and doc["ok"] is True
    assert list(doc["runs"].values()) == ["completed"]


def test_submit_writes_an_absolute_file_path(live, tmp_path):
    (tmp_path / "sub").mkdir()
    r = submit(live, "--json", "--type", "nothing-matches-this", "--file", "sub/x.exe", wait=False, cwd=tmp_path)
    doc = json.loads(r.stdout)
    assert doc["detection"]["file_path"] == str(tmp_path / "sub" / "x.exe")
    with Client(live.socket) as c:
        deadline = time.monotonic() + 60
        while (found := [x for x in c.call("detections.list", limit=100)["items"] if x["external_id"] == doc["id"]]
               ) == []:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert found[0]["file_path"] == str(tmp_path / "sub" / "x.exe")


def test_events_lists_show_and_history_carry_and_accept_the_producers_id(live):
    with Client(live.socket).subscribe([ev.DETECTION_RECEIVED, ev.RUN_STARTED, ev.RUN_FINISHED,
                                        ev.DETECTION_MATCHED]) as stream:
        stream.settimeout(60)
        assert submit(live, "--type", "note", "--id", "edr:abc", wait=False).returncode == 0
        seen: dict[str, dict] = {}
        for event in stream:
            if event.data.get("external_id") == "edr:abc":
                seen[event.name] = event.data
            if ev.RUN_FINISHED in seen:
                break
    did = seen[ev.DETECTION_RECEIVED]["detection_id"]
    run_id = seen[ev.RUN_STARTED]["run_id"]
    assert seen[ev.RUN_STARTED]["detection_id"] == seen[ev.RUN_FINISHED]["detection_id"] == did
    assert seen[ev.DETECTION_MATCHED]["runs"] == [run_id]
    with Client(live.socket) as c:
        listed = [x for x in c.call("detections.list", limit=100)["items"] if x["detection_id"] == did]
        assert listed[0]["external_id"] == "edr:abc"
        assert c.call("runs.get", run_id=run_id)["external_id"] == "edr:abc"
        got = c.call("detections.get", id="edr:abc")
        assert got["detection_id"] == did and [r["run_id"] for r in got["runs"]] == [run_id]
    for ident in (did, "edr:abc"):
        history = ok(live, "history", "--detection", ident).splitlines()
        assert len(history) == 2 and history[1].startswith(run_id), history
        shown = ok(live, "show", ident)
        assert shown.startswith(f"Detection {did}\n") and "Producer's id: edr:abc" in shown and run_id in shown
    assert f"Detection: {did} (producer's id edr:abc)" in ok(live, "show", run_id)
    assert "No runs of detection nobody-sent-this." in ok(live, "history", "--detection", "nobody-sent-this")


def test_a_unique_prefix_of_a_run_id_works_and_an_ambiguous_one_lists_the_candidates(live):
    with Client(live.socket) as c:
        first = c.call("runs.start", workflow_id="notify3")["run_id"]
        second = c.call("runs.start", workflow_id="notify3")["run_id"]
    wait_run(live, first), wait_run(live, second)
    common = os.path.commonprefix([first, second])
    unique = second[: len(common) + 1]
    assert ok(live, "show", unique).startswith(f"Run {second}\n")
    r = sddctl(live, "show", common[:6])
    assert r.returncode == 2 and "ambiguous" in r.stderr and first in r.stderr and second in r.stderr
    with Client(live.socket) as c:
        blocking = c.call("runs.start", workflow_id="blocking")["run_id"]
        deadline = time.monotonic() + 30
        while c.call("runs.get", run_id=blocking)["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
    prefix = blocking[: len(os.path.commonprefix([blocking, second])) + 1]
    assert ok(live, "cancel", prefix) == f"Cancelled run {blocking}.\n"
    assert wait_run(live, blocking)["status"] == "cancelled"


def test_stats_columns_add_up(live):
    lines = ok(live, "stats").splitlines()
    header = lines[0].split("  ")
    header = [h.strip() for h in header if h.strip()]
    assert header == ["WORKFLOW", "RUNS", "OK", "FAILED", "ROLLED BACK", "CANCELLED", "INTERRUPTED", "ACTIVE",
                      "MEAN", "P95", "LAST RUN"]
    with Client(live.socket) as c:
        for row in c.call("runs.stats")["items"]:
            parts = (row["completed"] + row["failed"] + row["rolled_back"] + row["cancelled"]
                     + row["interrupted"] + row["active"])
            assert parts == row["runs"], row
    blocking = next(line for line in lines if line.startswith("blocking "))
    numbers = [int(x) for x in blocking.split()[1:8]]
    assert numbers[0] == sum(numbers[1:]) and numbers[4] >= 1  # the cancelled run is a column of its own


def test_watch_lines_are_aligned_skipped_steps_never_start_and_bogus_events_are_usage_errors(live):
    r = sddctl(live, "watch", "--event", "bogus")
    assert r.returncode == 2 and "invalid choice: 'bogus'" in r.stderr
    with Client(live.socket) as c, pytest.raises(Exception, match="no such event 'bogus'"):
        c.subscribe(["bogus"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDD_")}
    env["SDD_SOCKET"] = str(live.socket)
    watcher = subprocess.Popen([SDDCTL, "watch"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().startswith("Watching sdd events")
        with Client(live.socket) as c:
            run_id = c.call("runs.start", workflow_id="skipper")["run_id"]
        lines = []
        for line in watcher.stdout:
            lines.append(line.rstrip("\n"))
            if line.split()[1:2] == ["run.finished"] and run_id in line:
                break
    finally:
        watcher.terminate()
        watcher.wait(10)
    mine = [x for x in lines if run_id in x]
    assert not [x for x in mine if "step.started" in x and "step=never" in x]  # skipped: never started
    assert any("step.finished" in x and "skipped" in x and "step=never" in x for x in mine)
    # Aligned: the fields start in one column whatever the event and status.
    starts = {x.index("run=") for x in mine}
    assert len(starts) == 1, mine
    finished = next(x for x in mine if "run.finished" in x)
    assert re.search(r"took=\d+\.\d\ds", finished)  # rounded, not 0.0123456789
    changes = [x for x in lines if "status.changed" in x]
    assert all(a.split()[2:] != b.split()[2:] for a, b in itertools.pairwise(changes)), changes


def test_quarantine_list_all_heads_every_column_and_restore_names_the_real_place(live, tmp_path):
    target = live.root / "q.exe"
    target.write_bytes(b"payload")
    with Client(live.socket) as c:
        run = wait_run(live, c.call("runs.start", workflow_id="contain",
                                    detection={"type": "malware", "file_path": str(target)})["run_id"])
    qid = run["steps"][0]["result"]["quarantine_id"]
    target.write_bytes(b"something new")
    r = sddctl(live, "quarantine", "restore", qid)
    assert r.returncode == 1 and "--on-conflict rename" in r.stderr and "on_conflict:" not in r.stderr
    out = ok(live, "quarantine", "restore", qid, "--on-conflict", "rename")
    assert f"to {target}.restored-{qid[:8]}" in out and f"something else is at {target}" in out
    assert (Path(f"{target}.restored-{qid[:8]}")).read_bytes() == b"payload"
    assert "was already restored" in ok(live, "quarantine", "restore", qid)
    lines = ok(live, "quarantine", "list", "--all").splitlines()
    assert lines[0].split() == ["ID", "ORIGINAL", "PATH", "THREAT", "SIZE", "QUARANTINED", "RESTORED"]
    row = next(x for x in lines if x.startswith(qid))
    assert row.rstrip().endswith(f"to {target}.restored-{qid[:8]}")


def test_every_option_has_help_and_errors_name_no_internal_method(live):
    parser = build_parser()
    todo = [("sddctl", parser)]
    while todo:
        name, p = todo.pop()
        for action in p._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                todo.extend((f"{name} {n}", sub) for n, sub in action.choices.items())
            elif action.dest != "help":
                assert action.help, f"{name} {'/'.join(action.option_strings) or action.dest} has no help"
    usage = " ".join(ok(live, "history", "--help").split())
    assert "90s, 2m, 30min, 2h, 7d, 1w" in usage
    for args in (("show", "no-such-run"), ("cancel", "no-such-run"), ("show-workflow", "nope"),
                 ("run", "nope"), ("history", "--limit", "5000"), ("history", "--since", "yesterday")):
        r = sddctl(live, *args)
        assert r.returncode in (1, 2), (args, r.stderr)
        assert not re.search(r"\b(runs|workflows|detections|quarantine)\.[a-z]+\b", r.stderr), (args, r.stderr)
        assert "params." not in r.stderr, (args, r.stderr)
