"""The log tells the story (issue 11.7): one structured line per detection accepted, rejected or duplicate,
per run started and finished (status, duration), per step failed, retried or rolled back, and per guard
refusal; each with `run_id`, `workflow` and `detection` fields, and never a Python dict inside `msg=`. A
second daemon on the same socket says so in one line and touches nothing."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

from tests.support.daemon import DaemonProcess

STORY = """workflow_id: story
trigger: {type: malware}
rollback_on_failure: true
steps:
  - step_id: quarantine
    action: quarantine_file
    params: {file_path: "{{ detection.file_path }}"}
    rollback_action: restore_file
  - step_id: flaky
    action: send_notification
    params: {channel: email, recipient: "root@localhost", message: "nobody listens on port 1"}
    max_retries: 1
    retry_delay: 0.01
    on_failure: rollback
"""

GUARDED = """workflow_id: guarded
trigger: {type: guarded}
steps:
  - step_id: delete
    action: delete_file
    params: {file_path: "{{ detection.file_path }}"}
"""

STORY_MESSAGES = {"detection accepted", "detection duplicate", "detection not matched", "detection excluded",
                  "run started", "run finished", "step failed", "step retried", "step rolled back",
                  "rollback failed", "guard refused", "spool file rejected"}


def parse(line: str) -> dict[str, str]:
    """One logfmt line as a map (values unquoted)."""
    fields = {}
    for token in shlex.split(line, posix=True):
        key, _, value = token.partition("=")
        fields[key] = value
    return fields


def story_lines(d: DaemonProcess) -> list[dict[str, str]]:
    return [f for f in map(parse, d.log().splitlines()) if f.get("msg") in STORY_MESSAGES]


def test_the_log_tells_what_happened_to_each_detection_and_run(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, workflows={"story": STORY, "guarded": GUARDED},
                       config_overrides={"logging": {"level": "info"},
                                         "actions": {"rate_limits": {"delete_file": [0, 60]},
                                                     "smtp": {"host": "127.0.0.1", "port": 1}}}) as d:
        victim = d.root / "victim.exe"
        victim.write_bytes(b"x")
        (d.root / "guarded.txt").write_text("the guard keeps it")
        d.drop({"id": "ext-1", "type": "malware", "file_path": str(victim)})
        d.drop({"id": "ext-1", "type": "malware", "file_path": str(victim)})  # the same id: a duplicate
        d.drop(b"{not json")
        d.drop({"type": "guarded", "file_path": str(d.root / "guarded.txt")})
        d.drop({"type": "nobody-handles-this"})
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status IN ('rolled_back', 'failed')") == 2
                   and d.count("SELECT count(*) FROM detections WHERE state = 'queued'") == 0
                   and d.spool_files("rejected"), what="both runs and every detection settled")
        assert victim.read_bytes() == b"x"  # rolled back: restored
        deadline = time.monotonic() + 30
        while len([x for x in story_lines(d) if x["msg"] == "run finished"]) < 2:
            assert time.monotonic() < deadline, d.log()
            time.sleep(0.05)
        lines = story_lines(d)
        log = d.log()
    by_msg: dict[str, list[dict[str, str]]] = {}
    for f in lines:
        by_msg.setdefault(f["msg"], []).append(f)
        assert {"run_id", "workflow", "detection"} <= set(f), f
    story_run = next(f["run_id"] for f in by_msg["run started"] if f["workflow"] == "story")
    accepted = {f["external_id"]: f for f in by_msg["detection accepted"]}
    assert accepted["ext-1"]["detection"] == "1" and accepted["ext-1"]["run_id"] == "-"
    (dup,) = by_msg["detection duplicate"]
    assert dup["external_id"] == "ext-1" and dup["of"] == "1"
    (rejected,) = by_msg["spool file rejected"]
    assert "invalid JSON" in rejected["reason"]
    (nomatch,) = by_msg["detection not matched"]
    assert nomatch["detection"] != "-"
    retried = [f for f in by_msg["step retried"] if f["run_id"] == story_run]
    assert [(f["step"], f["attempt"], f["workflow"], f["detection"]) for f in retried] == [("flaky", "2", "story", "1")]
    failed = {(f["run_id"], f["step"]) for f in by_msg["step failed"]}
    assert (story_run, "flaky") in failed
    (rolled,) = by_msg["step rolled back"]
    assert rolled["run_id"] == story_run and rolled["step"] == "quarantine" and rolled["detection"] == "1"
    finished = {f["workflow"]: f for f in by_msg["run finished"]}
    assert finished["story"]["status"] == "rolled_back" and re.fullmatch(r"\d+\.\d{3}s", finished["story"]["duration"])
    assert finished["story"]["external_id"] == "ext-1" and "127.0.0.1:1" in finished["story"]["error"]
    assert finished["guarded"]["status"] == "failed"
    (guard,) = by_msg["guard refused"]
    assert guard["workflow"] == "guarded" and guard["guard"] == "rate_limit:delete_file"
    assert guard["run_id"] == finished["guarded"]["run_id"] and guard["detection"] != "-"
    for line in log.splitlines():
        msg = parse(line).get("msg", "")
        assert not re.search(r"\{'|': ", msg), line  # no Python dict in a message


def test_a_second_daemon_on_the_same_socket_says_so_in_one_line_and_touches_nothing(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path / "one", workflows={"story": STORY}) as first:
        second = DaemonProcess(tmp_path / "two", workflows={"story": STORY})
        second.config_file.write_text(first.config_file.read_text())  # same socket, spool and database
        try:
            second.start(wait_ready=False)
            assert second.proc is not None and second.proc.wait(60) == 1
        finally:
            second.close()
        lines = [x for x in second.log().splitlines() if x.strip()]
        assert len(lines) == 1, lines
        assert "sdd is already running" in lines[0] and "Traceback" not in lines[0]
        with first.client() as c:
            assert c.call("ping") == {"pong": True}  # the first one is untouched
