"""sddctl end to end: every command, in human and --json form, against a real daemon (the console script
runs as a child process, so stdout is a pipe and there is no colour)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from sdd_client.client import Client

from tests.api.live import SDDCTL, sddctl, wait_run

TERMINAL = {"completed", "failed", "rolled_back", "cancelled", "interrupted"}


def ok(d, *args, **kw) -> str:
    r = sddctl(d, *args, **kw)
    assert r.returncode == 0, f"sddctl {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    assert "\x1b[" not in r.stdout  # no colour on a pipe
    return r.stdout


def as_json(d, *args, **kw):
    return json.loads(ok(d, "--json", *args, **kw))


def test_status(live):
    assert "sdd running" in ok(live, "status") and f"pid {live.pid}" in ok(live, "status")
    assert as_json(live, "status")["state"] == "running"
    assert json.loads(ok(live, "status", "--json"))["pid"] == live.pid  # --json after the command too


def test_workflows_and_show_workflow(live):
    text = ok(live, "workflows")
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STEPS", "TRIGGER"]
    assert any(line.startswith("notify3 ") and "note" in line for line in lines)
    ids = {w["workflow_id"] for w in as_json(live, "workflows")["items"]}
    assert {"notify3", "contain", "blocking", "failing"} <= ids
    shown = ok(live, "show-workflow", "notify3")
    assert "Three log notifications" in shown and "- second" in shown
    assert as_json(live, "show-workflow", "notify3")["workflow_id"] == "notify3"
    missing = sddctl(live, "show-workflow", "nope")
    assert missing.returncode == 1 and "not_found" in missing.stderr


def test_validate(live, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("workflow_id: good\nsteps:\n  - step_id: a\n    action: send_notification\n"
                    "    params: {message: hi, channel: log}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("workflow_id: bad\nsteps:\n  - step_id: a\n    action: no_such_action\n")
    assert "ok (good)" in ok(live, "validate", str(good))
    r = sddctl(live, "validate", str(good), str(bad))
    assert r.returncode == 1 and f"{bad}:" in r.stdout
    r = sddctl(live, "--json", "validate", str(good), str(bad))
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["valid"] is False and [f["valid"] for f in doc["files"]] == [True, False]


def test_run_wait_shows_steps_then_outcome(live):
    out = ok(live, "run", "notify3", "--set", "x=7", "--wait")
    lines = out.splitlines()
    assert lines[0].startswith("Started run ")
    assert [line.split()[1] for line in lines[1:4]] == ["first", "second", "third"]
    assert "completed" in lines[-1]
    doc = as_json(live, "run", "notify3", "--wait")
    assert doc["status"] == "completed" and len(doc["steps"]) == 3


def test_run_wait_on_a_failing_workflow_exits_1(live):
    r = sddctl(live, "run", "failing", "--wait")
    assert r.returncode == 1 and "boom" in r.stdout and "failed" in r.stdout.splitlines()[-1]


def test_run_without_wait_and_dry_run(live):
    doc = as_json(live, "run", "notify3", "--set", 'x={"a": 1}')
    assert doc["workflow_id"] == "notify3" and doc["run_id"]
    assert wait_run(live, doc["run_id"])["context"]["x"] == {"a": 1}
    assert "Started run" in ok(live, "run", "notify3")
    out = ok(live, "run", "notify3", "--dry-run")
    assert "Dry run of notify3" in out and "first" in out
    assert as_json(live, "run", "notify3", "--dry-run")["plan"]
    bad = sddctl(live, "run", "notify3", "--set", "novalue")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr


def test_history_show_and_stats(live):
    run_id = as_json(live, "run", "notify3", "--wait")["run_id"]
    history = ok(live, "history", "--workflow", "notify3", "--status", "completed", "--limit", "5")
    lines = history.splitlines()
    assert lines[0].split()[:3] == ["RUN", "WORKFLOW", "STATUS"]
    assert any(line.startswith(run_id) and "ago" in line or "just now" in line for line in lines[1:])
    page = as_json(live, "history", "--workflow", "notify3", "--limit", "2")
    assert len(page["items"]) <= 2 and all(r["workflow_id"] == "notify3" for r in page["items"])
    assert sddctl(live, "history", "--status", "bogus").returncode == 2
    assert run_id in ok(live, "history", "--since", "1h")
    assert as_json(live, "history", "--since", "2099-01-01T00:00:00Z")["items"] == []
    r = sddctl(live, "history", "--since", "soon")
    assert r.returncode == 2 and "since" in r.stderr
    shown = ok(live, "show", run_id)
    assert f"Run {run_id}" in shown and "Timeline:" in shown
    timeline = shown[shown.index("Timeline:"):]
    assert timeline.index("first") < timeline.index("second") < timeline.index("third")
    assert as_json(live, "show", run_id)["run_id"] == run_id
    missing = sddctl(live, "show", "no-such-run")
    assert missing.returncode == 1 and "no-such-run" in missing.stderr
    stats = ok(live, "stats")
    assert stats.splitlines()[0].split()[:2] == ["WORKFLOW", "RUNS"] and "notify3" in stats
    assert any(s["workflow_id"] == "notify3" for s in as_json(live, "stats")["items"])


def test_cancel(live):
    run_id = as_json(live, "run", "blocking")["run_id"]
    with Client(live.socket) as c:
        deadline = time.monotonic() + 30
        while c.call("runs.get", run_id=run_id)["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert f"Cancelled run {run_id}" in ok(live, "cancel", run_id)
    assert wait_run(live, run_id)["status"] == "cancelled"
    again = sddctl(live, "--json", "cancel", run_id)
    assert again.returncode == 1 and json.loads(again.stdout)["error"]["code"] == "conflict"
    second = as_json(live, "run", "blocking")["run_id"]
    with Client(live.socket) as c:
        while c.call("runs.get", run_id=second)["status"] != "running":
            time.sleep(0.02)
    assert as_json(live, "cancel", second) == {"cancelled": True, "run_id": second}


def test_submit_into_the_spool_and_through_the_api(live, tmp_path):
    victim = live.root / "submitted.bin"
    victim.write_bytes(b"one")
    out = ok(live, "submit", "--type", "malware", "--file", str(victim), "--threat", "T1", "--severity", "high",
             "--field", "extra=5", "--spool", str(live.spool))
    assert out.startswith("Queued ")
    live.wait_for(lambda: not victim.exists(), what="quarantine of the spool submission")
    victim = live.root / "submitted-2.bin"  # another file: the same one again would be a duplicate
    victim.write_bytes(b"two")
    doc = as_json(live, "submit", "--type", "malware", "--file", str(victim), "--id", "ext-1",
                  env={"SDD_SPOOL": str(live.spool)})
    assert doc["detection"]["id"] == "ext-1" and doc["file"].startswith(str(live.spool / "new"))
    live.wait_for(lambda: not victim.exists(), what="quarantine of the second submission")
    victim = live.root / "submitted-3.bin"
    victim.write_bytes(b"three")
    assert ok(live, "submit", "--api", "--type", "malware", "--file", str(victim)).startswith("Submitted detection")
    live.wait_for(lambda: not victim.exists(), what="quarantine of the API submission")
    doc = as_json(live, "submit", "--api", "--type", "note", "--pid", str(os.getpid()))
    assert doc["detection_id"]
    assert sddctl(live, "submit", "--file", "/x").returncode == 2  # no --type


def test_submit_clamav_with_an_empty_environment_uses_the_config(live):
    victim = live.root / "clam.bin"
    victim.write_bytes(b"clam")
    env = {"CLAM_VIRUSEVENT_FILENAME": str(victim), "CLAM_VIRUSEVENT_VIRUSNAME": "Eicar-Test-Signature"}
    # As clamd's VirusEvent runs it: no PATH, no HOME, only the two variables (+ the config we point at).
    r = subprocess.run([SDDCTL, "submit", "--clamav", "--config", str(live.config_file)], env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    live.wait_for(lambda: not victim.exists(), what="quarantine of the ClamAV detection")
    raw = live.query("SELECT raw FROM detections WHERE threat_name = 'Eicar-Test-Signature'")
    assert json.loads(raw[0][0])["scanner"] == "clamav"
    r = subprocess.run([SDDCTL, "submit", "--clamav", "--config", str(live.config_file)], env={},
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "CLAM_VIRUSEVENT_FILENAME" in r.stderr


def test_quarantine_list_and_restore(live):
    victim = live.root / "restore-me.bin"
    victim.write_bytes(b"restore me")
    ok(live, "submit", "--api", "--type", "malware", "--file", str(victim))
    live.wait_for(lambda: not victim.exists(), what="quarantine")
    entries = as_json(live, "quarantine", "list")["items"]
    entry = next(q for q in entries if q["original_path"] == str(victim))
    listing = ok(live, "quarantine", "list")
    assert listing.splitlines()[0].split()[:3] == ["ID", "ORIGINAL", "PATH"] and str(victim) in listing
    assert "Restored" in ok(live, "quarantine", "restore", entry["id"])
    assert victim.read_bytes() == b"restore me"
    assert "error" not in as_json(live, "quarantine", "restore", entry["id"])  # restoring is idempotent
    missing = sddctl(live, "--json", "quarantine", "restore", "no-such-entry")
    assert missing.returncode == 1 and json.loads(missing.stdout)["error"]["code"] == "not_found"
    assert entry["id"] in {q["id"] for q in as_json(live, "quarantine", "list", "--all")["items"]}


def test_reload(live):
    assert ok(live, "reload").startswith("Reloaded: 5 workflows")
    assert as_json(live, "reload")["ok"] is True


def test_watch_follows_events_until_interrupted(live):
    for mode in ([], ["--json"]):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SDD_")}
        env["SDD_SOCKET"] = str(live.socket)
        proc = subprocess.Popen([SDDCTL, *mode, "watch", "--event", "run.finished"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if not mode:
                assert proc.stdout.readline().startswith("Watching sdd events")
            else:  # no banner in JSON mode: wait until the subscription exists
                live.wait_for(lambda: Client(live.socket).call("status")["api"]["subscribers"] >= 1,
                              what="watch subscription")
            run_id = as_json(live, "run", "notify3")["run_id"]
            lines = []
            while True:
                line = proc.stdout.readline()
                assert line, proc.stderr.read()
                lines.append(line)
                if run_id in line:
                    break
            if mode:  # the run's steps and start were not sent: only the kind asked for
                assert {json.loads(x)["event"] for x in lines} == {"run.finished"}
            else:
                assert "run.finished" in line and "completed" in line
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()


def test_watch_exits_3_when_the_daemon_goes_away(tmp_path):
    from tests.api.live import start_daemon

    d = start_daemon(tmp_path)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SDD_")}
        proc = subprocess.Popen([SDDCTL, "--socket", str(d.socket), "watch"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().startswith("Watching")
            d.stop()
            assert proc.wait(60) == 3
            assert "closed the event stream" in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
    finally:
        d.close()


@pytest.mark.parametrize("args", [["status"], ["--json", "history"], ["watch"]])
def test_unreachable_daemon_is_one_line_and_exit_3(tmp_path, args):
    sock = tmp_path / "nothing.sock"
    r = subprocess.run([SDDCTL, "--socket", str(sock), *args], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 3
    assert r.stderr.strip().count("\n") == 0 and str(sock) in r.stderr


def test_usage_errors_exit_2(live):
    assert sddctl(live).returncode == 2
    assert sddctl(live, "frobnicate").returncode == 2
    assert sddctl(live, "history", "--limit", "many").returncode == 2
    r = sddctl(live, "history", "--limit", "0")  # refused by the daemon as invalid_params
    assert r.returncode == 2 and "limit" in r.stderr


def test_colour_only_on_a_terminal_and_never_with_no_color(live):
    import pty

    def run_on_tty(extra_env):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SDD_") and k != "NO_COLOR"}
        env.update({"SDD_SOCKET": str(live.socket), "TERM": "xterm", **extra_env})
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen([SDDCTL, "status"], env=env, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL)
            os.close(slave)
            chunks = []
            while True:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            assert proc.wait(30) == 0
            return b"".join(chunks).decode()
        finally:
            os.close(master)

    assert "\x1b[" in run_on_tty({})
    assert "\x1b[" not in run_on_tty({"NO_COLOR": "1"})
