"""A desktop notification's result says whether it reached the bus (issue 11.5), through a real daemon on a
real private bus: delivered when sdd owns its name there; not delivered, with the reason, while another
connection owns the name (notifiers listening to sdd would not see it) — and delivered again once sdd gets
the name."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from dbus_next import RequestNameReply

from sdd.bus import BUS_NAME
from tests.api.live import sddctl
from tests.bus.conftest import close_bus, connect
from tests.support.daemon import DaemonProcess
from tests.support.dbus import needs_dbus, private_bus  # noqa: F401 - the fixture

pytestmark = [needs_dbus, pytest.mark.timeout(120)]

DESKTOP = """workflow_id: desktop
steps:
  - step_id: tell
    action: send_notification
    params: {channel: desktop, title: hello, message: world}
"""


def run_desktop(d: DaemonProcess) -> dict[str, Any]:
    r = sddctl(d, "--json", "run", "desktop", "--wait")
    return json.loads(r.stdout)["steps"][0]


async def test_a_notification_is_delivered_only_while_sdd_owns_its_name(
        tmp_path: Path, private_bus: Any) -> None:  # noqa: F811 - the fixture
    squatter = await connect(private_bus.address)
    try:
        assert await squatter.request_name(BUS_NAME) is RequestNameReply.PRIMARY_OWNER
        with DaemonProcess(tmp_path, workflows={"desktop": DESKTOP},
                           config_overrides={"dbus": {"bus": private_bus.address}}) as d:
            step = await asyncio.to_thread(run_desktop, d)
            assert step["status"] == "failed"
            assert "another connection owns the name org.searchanddestroy.Sdd1" in step["error"]
            await squatter.release_name(BUS_NAME)  # sdd was queued for it: now it is sdd's
            for _ in range(200):
                step = await asyncio.to_thread(run_desktop, d)
                if step["status"] == "completed":
                    break
                await asyncio.sleep(0.05)
            assert step["status"] == "completed", step
            assert step["result"]["sent"] is True
            assert step["result"]["channels"] == ["desktop"] and step["result"]["deliveries"] == [
                {"channel": "desktop"}]
    finally:
        close_bus(squatter)
