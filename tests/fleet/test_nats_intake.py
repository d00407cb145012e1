"""Detections pushed from the centre over JetStream (`[intake.nats]`), against a real `nats-server -js`: acked only
after the durable commit, so pushes during a restart or a kill -9 all run exactly once; hostile messages are
rejected with a reason and never redelivered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fleet.conftest import notify_workflow
from tests.support.daemon import DaemonProcess
from tests.support.nats import NatsServer, add_stream, js_call

SUBJECT = "sdd.detections.host-c"


def intake_config(url: str) -> dict[str, Any]:
    return {"intake": {"nats": {"url": url}}}


def publish(url: str, bodies: list[bytes]) -> None:
    async def pub(nc: Any, js: Any) -> None:
        for body in bodies:
            await js.publish(SUBJECT, body)
    js_call(url, pub)


def consumer_state(url: str, durable: str = "sdd-host-c") -> Any:
    async def info(nc: Any, js: Any) -> Any:
        return await js.consumer_info("SDD_DETECTIONS", durable)
    return js_call(url, info)


def detection(i: int, with_id: bool = True) -> bytes:
    d: dict[str, Any] = {"type": "malware", "file_path": f"/tmp/pushed{i}", "threat_name": "Pushed"}
    if with_id:
        d["id"] = f"push-{i}"
    return json.dumps(d).encode()


def runs_by_path(d: DaemonProcess) -> dict[str, int]:
    rows = d.query("SELECT json_extract(d.raw, '$.file_path') AS path, count(r.run_id) AS n FROM detections d "
                   "LEFT JOIN runs r ON r.detection_id = d.id GROUP BY path")
    return {row["path"]: row["n"] for row in rows}


def test_pushed_detections_run_and_are_acked(tmp_path: Path, nats_server: NatsServer) -> None:
    add_stream(nats_server.url, "SDD_DETECTIONS", ["sdd.detections.>"])
    d = DaemonProcess(tmp_path, workflows={"note": notify_workflow()}, config_overrides=intake_config(nats_server.url),
                      env={"SDD_HOSTNAME": "host-c"})
    with d:
        publish(nats_server.url, [detection(i) for i in range(10)])
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'completed'") == 10, 30)
        d.wait_for(lambda: consumer_state(nats_server.url).num_ack_pending == 0, 30)
        info = consumer_state(nats_server.url)
        assert info.num_pending == 0 and info.delivered.stream_seq == 10
        with d.client() as c:
            assert c.call("status")["export"]["intake"]["accepted"] == 10
    assert runs_by_path(d) == {f"/tmp/pushed{i}": 1 for i in range(10)}


def test_pushes_during_a_kill9_and_a_restart_all_run_once(tmp_path: Path, nats_server: NatsServer) -> None:
    add_stream(nats_server.url, "SDD_DETECTIONS", ["sdd.detections.>"])

    async def durable(nc: Any, js: Any) -> None:
        # The centre's consumer: a short ack_wait, so what the killed daemon fetched but never acked comes back soon.
        await js.add_consumer("SDD_DETECTIONS", durable_name="sdd-host-c", filter_subject=SUBJECT,
                              ack_policy="explicit", ack_wait=2.0)
    js_call(nats_server.url, durable)
    d = DaemonProcess(tmp_path, workflows={"note": notify_workflow()}, config_overrides=intake_config(nats_server.url),
                      env={"SDD_HOSTNAME": "host-c"})
    d.start()
    try:
        publish(nats_server.url, [detection(i, with_id=i % 2 == 0) for i in range(150)])
        d.wait_for(lambda: d.count("SELECT count(*) FROM detections") >= 20, 30, interval=0.005)
        d.kill()  # kill -9 while pushes arrive
        publish(nats_server.url, [detection(i, with_id=i % 2 == 0) for i in range(150, 200)])  # while it is down
        d.start()
        d.wait_for(lambda: d.count("SELECT count(*) FROM detections") >= 170, 60)
        d.stop()  # and a clean restart too
        publish(nats_server.url, [detection(i) for i in range(200, 220)])
        d.start()
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'completed'") == 220, 90)
        d.wait_for(lambda: consumer_state(nats_server.url).num_ack_pending == 0, 30)
        assert consumer_state(nats_server.url).num_pending == 0
    finally:
        d.close()
    assert runs_by_path(d) == {f"/tmp/pushed{i}": 1 for i in range(220)}
    # Redelivered messages were recognised as replays, not stored again as duplicates.
    assert d.count("SELECT count(*) FROM detections WHERE state = 'duplicate'") == 0


def test_hostile_messages_are_rejected_with_a_reason_and_never_redelivered(
        tmp_path: Path, nats_server: NatsServer) -> None:
    add_stream(nats_server.url, "SDD_DETECTIONS", ["sdd.detections.>"], max_msg_size=4 * 1024 * 1024)
    d = DaemonProcess(tmp_path, workflows={"note": notify_workflow()},
                      config_overrides={**intake_config(nats_server.url), "intake": {
                          "nats": {"url": nats_server.url}, "max_file_size": 4096}},
                      env={"SDD_HOSTNAME": "host-c"})
    hostile = [b"", b"not json", b"\xff\xfe\x00", b'["a list"]', b'{"no": "type"}', b'{"type": ""}',
               b'{"type": "malware", "id": {"x": 1}}', b'{"type": "x", "n": NaN}',
               json.dumps({"type": "malware", "pad": "x" * 5000}).encode(), b"[" * 200 + b"]" * 200]
    with d:
        publish(nats_server.url, [*hostile, detection(1)])  # and a positive control at the end
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'completed'") == 1, 30)
        d.wait_for(lambda: d.count("SELECT count(*) FROM audit WHERE action = 'intake.nats'") == len(hostile), 30)
        d.wait_for(lambda: consumer_state(nats_server.url).num_ack_pending == 0, 30)
        info = consumer_state(nats_server.url)
        assert info.num_pending == 0 and info.num_redelivered == 0
    reasons = {row["target"]: json.loads(row["details"])["reason"] for row in d.query(
        "SELECT target, details FROM audit WHERE action = 'intake.nats' AND outcome = 'rejected'")}
    assert len(reasons) == len(hostile)
    assert reasons["nats:SDD_DETECTIONS:2"].startswith("invalid JSON")
    assert "UTF-8" in reasons["nats:SDD_DETECTIONS:3"]
    assert "larger than 4096" in reasons["nats:SDD_DETECTIONS:9"]
    assert d.count("SELECT count(*) FROM detections") == 1
