"""`reload` re-reads the workflows off the event loop: a daemon reading a large set still answers meanwhile,
and the reload then applies the new set."""

from __future__ import annotations

from typing import Any

from tests.support.daemon import DaemonProcess

GOOD = "workflow_id: good\nsteps:\n  - {step_id: n, type: notification, params: {message: hi, channel: log}}\n"
# 3,000 steps, a valid workflow of 270 KB: parsing it costs seconds of pure Python here.
LARGE = "workflow_id: large\ntrigger: {type: malware}\nsteps:\n" + "".join(
    f"  - step_id: s{i}\n    type: notification\n    params: {{message: 'step {i}', channel: log}}\n"
    for i in range(3000))


def test_the_daemon_answers_while_a_reload_parses_and_then_has_the_new_set(make_daemon: Any) -> None:
    d: DaemonProcess = make_daemon(workflows={"good": GOOD})
    d.write_workflow("large", LARGE)
    assert d.answers_during("reload") == {"ok": True, "errors": [], "workflows": 2}
    with d.client() as client:
        steps = client.call("workflows.get", workflow_id="large")["steps"]
    assert len(steps) == 3000 and steps[-1]["step_id"] == "s2999"
