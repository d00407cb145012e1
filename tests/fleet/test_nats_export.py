"""OCSF events over NATS JetStream, against a real `nats-server -js` and real daemons: every event reaches the stream
exactly once across sdd crashes and NATS restarts; an unreachable NATS never slows intake; the outbox is bounded."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.fleet.conftest import notify_workflow, quarantine_workflow
from tests.support.daemon import DaemonProcess
from tests.support.nats import NatsServer, add_stream, stream_messages

SLOW_WORKFLOW = """workflow_id: slow
trigger: {type: malware}
on_interrupt: retry
steps:
  - step_id: pause
    type: script
    params: {script: pause.sh}
"""


def export_config(url: str, **extra: Any) -> dict[str, Any]:
    return {"export": {"nats": {"url": url}, **extra}}


def events_of(url: str, stream: str = "SDD") -> list[dict[str, Any]]:
    return [json.loads(m.data) for m in stream_messages(url, stream)]


def export_status(d: DaemonProcess) -> dict[str, Any]:
    with d.client() as c:
        return c.call("status")["export"]


def wait_delivered(d: DaemonProcess, sink: str = "nats", timeout: float = 60.0) -> None:
    d.wait_for(lambda: export_status(d)["sinks"][sink]["depth"] == 0, timeout, what=f"the {sink} outbox to drain")


def test_each_detection_and_quarantine_reaches_the_stream_with_its_uid_as_msg_id(
        tmp_path: Path, nats_server: NatsServer) -> None:
    add_stream(nats_server.url, "SDD", ["sdd.events.>"])
    d = DaemonProcess(tmp_path, workflows={"contain": quarantine_workflow()},
                      config_overrides=export_config(nats_server.url), env={"SDD_HOSTNAME": "host-a.example"})
    with d:
        files = []
        for i in range(3):
            f = d.root / f"evil{i}.exe"
            f.write_bytes(b"MZ" + bytes([i]) * 10)
            files.append(f)
            d.drop({"type": "malware", "file_path": str(f), "threat_name": "Win.Test", "severity": "high"})
        d.wait_for(lambda: d.count("SELECT count(*) FROM quarantine") == 3, 30)
        wait_delivered(d)
        assert export_status(d)["host"] == "host-a.example"
    msgs = stream_messages(nats_server.url, "SDD")
    events = [json.loads(m.data) for m in msgs]
    assert sorted(e["class_uid"] for e in events) == [2004] * 3 + [7002] * 3
    for m, e in zip(msgs, events):
        assert m.subject == "sdd.events.host-a_example"  # the dots of a hostname would split the subject
        assert m.headers["Nats-Msg-Id"] == e["metadata"]["uid"]
        assert e["device"]["hostname"] == "host-a.example" and e["metadata"]["version"] == "1.7.0"
    isolated = {e["file"]["path"] for e in events if e["class_uid"] == 7002}
    assert isolated == {str(f) for f in files} and not any(f.exists() for f in files)
    assert d.count("SELECT count(*) FROM outbox") == 0  # released once every sink had them


def test_kill9_mid_burst_and_a_nats_restart_leave_every_event_in_the_stream_once(
        tmp_path: Path, nats_server: NatsServer) -> None:
    add_stream(nats_server.url, "SDD", ["sdd.events.>"])
    out = tmp_path / "events.ocsf.jsonl"
    config = export_config(nats_server.url, ocsf_file=str(out))
    # Runs of ~20 ms, few at a time, and a short queue: intake takes seconds, so the kill lands mid-burst.
    config.update({"engine": {"max_concurrent_runs": 8, "shutdown_grace": 10.0}, "intake": {"max_queued": 16}})
    d = DaemonProcess(tmp_path, workflows={"slow": SLOW_WORKFLOW}, config_overrides=config,
                      scripts={"pause.sh": "#!/bin/sh\nsleep 0.02\n"}, env={"SDD_HOSTNAME": "host-a"})
    d.start()
    try:
        for i in range(500):
            d.drop({"type": "malware", "id": f"burst-{i}", "file_path": f"/tmp/f{i}", "severity": "low"})
        d.wait_for(lambda: d.count("SELECT count(*) FROM detections") >= 60, 60, interval=0.005)
        nats_server.restart()  # NATS goes away and comes back mid-burst
        d.wait_for(lambda: d.count("SELECT count(*) FROM detections") >= 200, 60, interval=0.005)
        d.kill()  # kill -9 mid-burst
        assert d.count("SELECT count(*) FROM detections") < 500
        d.start()
        d.wait_for(lambda: d.count("SELECT count(*) FROM detections") == 500, 120)
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'completed'") == 500, 120)
        wait_delivered(d)
        wait_delivered(d, "file")
    finally:
        d.close()
    events = events_of(nats_server.url)
    uids = Counter(e["metadata"]["uid"] for e in events)
    assert len(events) == 500 and len(uids) == 500 and max(uids.values()) == 1
    producer_ids = sorted(e["finding_info"]["uid"] for e in events)
    assert producer_ids == sorted(f"burst-{i}" for i in range(500))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert Counter(e["metadata"]["uid"] for e in lines) == uids  # the file too: each event once


def test_nats_down_never_slows_intake_and_events_wait_until_it_returns(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)  # not started: NATS is down when sdd starts
    d = DaemonProcess(tmp_path, workflows={"note": notify_workflow()},
                      config_overrides=export_config(server.url), env={"SDD_HOSTNAME": "host-b"})
    with d:
        t0 = time.monotonic()
        for i in range(20):
            d.drop({"type": "malware", "file_path": f"/tmp/down{i}"})
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'completed'") == 20, 30)
        assert time.monotonic() - t0 < 20  # runs went on without the sink
        status = export_status(d)["sinks"]["nats"]
        assert status["depth"] == 20 and status["state"] in ("down", "starting")
        d.wait_for(lambda: export_status(d)["sinks"]["nats"]["state"] == "down", 30)
        shown = subprocess.run([str(Path(sys.executable).parent / "sddctl"), "--socket", str(d.socket), "status"],
                               capture_output=True, text=True, check=True, timeout=30).stdout
        assert "Export" in shown and "nats 20 waiting (down: " in shown
        with server:
            add_stream(server.url, "SDD", ["sdd.events.>"])
            wait_delivered(d)
            assert len(events_of(server.url)) == 20


def test_a_missing_stream_is_reported_and_retried(tmp_path: Path, nats_server: NatsServer) -> None:
    d = DaemonProcess(tmp_path, workflows={"note": notify_workflow()},
                      config_overrides=export_config(nats_server.url), env={"SDD_HOSTNAME": "h"})
    with d:
        d.drop({"type": "malware", "file_path": "/tmp/x"})
        d.wait_for(lambda: d.count("SELECT count(*) FROM outbox") == 1, 30)  # recorded, waiting
        d.wait_for(lambda: "does not exist" in export_status(d)["sinks"]["nats"]["last_error"], 30)
        add_stream(nats_server.url, "SDD", ["sdd.events.>"])
        wait_delivered(d)
    assert [e["class_uid"] for e in events_of(nats_server.url)] == [2004]


def test_a_full_outbox_keeps_the_oldest_and_counts_the_drop_loudly(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    d = DaemonProcess(tmp_path, workflows={"note": notify_workflow()},
                      config_overrides=export_config(server.url, outbox_max_events=5), env={"SDD_HOSTNAME": "h"})
    with d:
        for i in range(8):
            d.drop({"type": "malware", "id": f"full-{i}", "file_path": f"/tmp/full{i}"})
            d.wait_for(lambda i=i: d.count("SELECT count(*) FROM detections") == i + 1, 30)
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'completed'") == 8, 30)
        status = export_status(d)
        assert status["dropped"] == 3 and status["sinks"]["nats"]["depth"] == 5
        assert "OUTBOX FULL" in d.log()
        with server:
            add_stream(server.url, "SDD", ["sdd.events.>"])
            wait_delivered(d)
            kept = sorted(e["finding_info"]["uid"] for e in events_of(server.url))
    assert kept == [f"full-{i}" for i in range(5)]
