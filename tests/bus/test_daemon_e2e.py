"""End to end: a real `sdd` daemon publishing on a private bus (`[dbus] bus = "<address>"`).

A detection dropped into the spool becomes DetectionReceived, RunStarted, StepFinished, Notification and
RunFinished signals (seen by a dbus-next client and by dbus-monitor), the properties read the daemon's
status, and sdd-notifier turns the right ones into desktop notifications.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sdd_client.notifier import Notifier, NotifierOptions

import sdd
from sdd.bus import BUS_NAME, INTERFACE, OBJECT_PATH
from tests.bus.conftest import WAIT, SignalCollector, call_bus, close_bus, connect
from tests.support.daemon import DaemonProcess
from tests.support.dbus import FakeNotifications, MonitorReader

pytestmark = pytest.mark.timeout(120)

DAEMON_WAIT = 60.0  # the daemon's own start-up (imports, database) on a loaded 2-core machine

WORKFLOW = """workflow_id: e2e
trigger:
  type: malware
  when: 'detection.severity == "critical"'
steps:
  - step_id: tell
    action: send_notification
    params:
      channel: desktop
      title: Threat found
      message: "{{ detection.file_path }}"
      urgency: critical
  - step_id: fail
    action: run_script
    params: {script: fail.sh}
    max_retries: 0
"""


async def test_a_dropped_detection_shows_up_on_the_bus_and_as_desktop_notifications(
    tmp_path: Path, private_bus: Any, fake_notifications: FakeNotifications, collector_factory: Any
) -> None:
    collector: SignalCollector = await collector_factory(private_bus.address)
    monitor = await MonitorReader.start(private_bus.address, f"type='signal',interface='{INTERFACE}'")
    notifier = Notifier(NotifierOptions(private_bus.address, private_bus.address, backoff_initial=0.05))
    notifier_task = asyncio.create_task(notifier.run())
    daemon = DaemonProcess(
        tmp_path,
        workflows={"e2e": WORKFLOW},
        scripts={"fail.sh": "#!/bin/sh\nexit 3\n"},
        config_overrides={"dbus": {"bus": private_bus.address}},
    )
    try:
        await notifier.wait_listening(WAIT)
        await asyncio.to_thread(daemon.start)

        bus = await connect(private_bus.address)
        try:
            owner = await call_bus(bus, "GetNameOwner", "s", [BUS_NAME])
            assert owner.body[0].startswith(":")
            node = await bus.introspect(BUS_NAME, OBJECT_PATH)
            props = bus.get_proxy_object(BUS_NAME, OBJECT_PATH, node).get_interface(INTERFACE)
            assert await props.get_version() == sdd.__version__
            assert await props.get_state() == "running"
        finally:
            close_bus(bus)

        victim = tmp_path / "invoice.exe"
        victim.write_bytes(b"not really malware")
        daemon.drop({"type": "malware", "severity": "critical", "file_path": str(victim),
                     "threat_name": "Test.Sig"})

        (finished,) = await collector.wait_for("RunFinished", timeout=DAEMON_WAIT)
        (detected,) = collector.of("DetectionReceived")
        (started,) = collector.of("RunStarted")
        steps = collector.of("StepFinished")
        (notification,) = collector.of("Notification")

        detection_id, type_, severity, file_path = detected.body
        assert (type_, severity, file_path) == ("malware", "critical", str(victim))
        run_id, workflow_id, started_detection = started.body
        assert workflow_id == "e2e" and started_detection == detection_id
        assert [(m.body[0], m.body[1], m.body[2]) for m in steps] == [
            (run_id, "tell", "completed"),
            (run_id, "fail", "failed"),
        ]
        assert notification.body == ["Threat found", str(victim), "critical"]
        assert finished.body[:3] == [run_id, "e2e", "failed"] and finished.body[3] >= 0.0

        out = await monitor.wait_for("member=RunFinished")
        assert f'string "{run_id}"' in out

        calls = await fake_notifications.wait_calls(3)
        assert sorted(c.summary for c in calls) == sorted(
            ["sdd: critical malware detected", "Threat found", "sdd: e2e failed"]
        )
        assert await asyncio.to_thread(daemon.stop) == 0
    finally:
        await monitor.stop()
        notifier.stop()
        await asyncio.wait_for(notifier_task, WAIT)
        await asyncio.to_thread(daemon.close)


GUARDED = """workflow_id: guarded
trigger: {type: malware}
steps:
  - step_id: quarantine
    action: quarantine_file
    timeout: 300
    params: {file_path: "{{ detection.file_path }}"}
"""


async def test_a_guard_trip_is_a_notification_signal_once(tmp_path: Path, private_bus: Any,
                                                          collector_factory: Any) -> None:
    """Issue 13: a rate limit reached with steps waiting is announced once, as a `Notification(s, s, s)`."""
    collector: SignalCollector = await collector_factory(private_bus.address)
    daemon = DaemonProcess(tmp_path, workflows={"guarded": GUARDED},
                           config_overrides={"dbus": {"bus": private_bus.address},
                                             "actions": {"rate_limits": {"quarantine_file": [1, 3600]}}})
    try:
        await asyncio.to_thread(daemon.start)
        area = daemon.root / "infected"
        area.mkdir()
        for i in range(3):
            victim = area / f"v{i}.exe"
            victim.write_bytes(b"EVIL %d" % i)
            daemon.drop({"type": "malware", "file_path": str(victim), "threat_name": "Test.Sig"})
        (note,) = await collector.wait_for("Notification", timeout=DAEMON_WAIT)
        assert note.signature == "sss"
        title, body, urgency = note.body
        assert "quarantine_file" in title and "rate limit for quarantine_file reached" in body
        assert urgency == "critical"
        await asyncio.to_thread(daemon.wait_for, lambda: daemon.count(
            "SELECT count(*) FROM steps WHERE status = 'waiting'") == 2, 60.0, 0.05, "both waits on disk")
        assert len(collector.of("Notification")) == 1, "one announcement per trip, not one per waiting step"
    finally:
        await asyncio.to_thread(daemon.close)
