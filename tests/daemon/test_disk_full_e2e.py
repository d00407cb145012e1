"""The database's disk fills up under a stream of detections (a real tmpfs, so root only), then room comes
back: nothing is dropped. Before, every commit that failed lost what it held (runs' steps and outcomes,
detections' states, 62,000 log lines), and the claimed spool files waited in cur/ for a restart."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.api.live import sddctl
from tests.support.daemon import DaemonProcess

NOTE = ("workflow_id: note\ntrigger: {type: note}\nsteps:\n"
        "  - {step_id: a, type: notification, params: {message: 'x {{ detection.pad[:8] }}', channel: log}}\n")
COUNT = 800


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_holds_the_detections_and_runs_until_there_is_room(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, workflows={"note": NOTE}, config_overrides={"logging": {"level": "warning"}})
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(d.state)], check=True)
    try:
        with d:
            for i in range(COUNT):
                d.drop({"type": "note", "id": f"n{i}", "pad": uuid.uuid4().hex * 64})
            client = d.client()
            d.wait_for(lambda: client.call("status")["database_full_since"] is not None, what="a full disk")
            assert "its disk is full" in sddctl(d, "status").stdout
            subprocess.run(["mount", "-o", "remount,size=200m", str(d.state)], check=True)
            d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'completed'") == COUNT,
                       timeout=120, what="every run recorded complete")
            assert client.call("status")["database_full_since"] is None
            assert d.count("SELECT count(*) FROM detections WHERE state = 'matched'") == COUNT
            d.wait_for(lambda: not d.spool_files("cur") and not d.spool_files("new"), what="an empty spool")
            client.close()
        log = d.log()
        assert "the disk is full; holding" in log and "commits work again" in log
        assert "cannot record" not in log and log.count("\n") < 50, log[-2000:]
    finally:
        subprocess.run(["umount", "-l", str(d.state)], check=False)
