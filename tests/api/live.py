"""A real daemon set up for the control-plane tests: a few cheap workflows, a script that blocks (for
cancel), a failing one, and a quarantine workflow. Used by tests/api and tests/client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.daemon import DaemonProcess

SDDCTL = str(Path(sys.executable).parent / "sddctl")

NOTIFY = """workflow_id: notify3
name: Three notes
description: Three log notifications
trigger: {type: note}
context: {who: tests}
steps:
  - step_id: first
    action: send_notification
    params: {message: "one", channel: log}
  - step_id: second
    action: send_notification
    params: {message: "two {{ context.get('x', 0) }}", channel: log}
  - step_id: third
    action: send_notification
    params: {message: "three", channel: log}
"""

BLOCKING = """workflow_id: blocking
name: Waits until cancelled
steps:
  - step_id: wait
    action: run_script
    params: {script: wait.sh, timeout: 600}
"""

FAILING = """workflow_id: failing
name: Always fails
steps:
  - step_id: ok
    action: send_notification
    params: {message: "before", channel: log}
  - step_id: boom
    action: run_script
    params: {script: fail.sh}
    on_failure: abort
"""

CONTAIN = """workflow_id: contain
name: Contain malware
trigger: {type: malware}
steps:
  - step_id: quarantine
    action: quarantine_file
    params: {file_path: "{{ detection.file_path }}"}
"""

# Hundreds of step events per run: enough to overflow a subscriber that does not read.
CHATTY = """workflow_id: chatty
name: Many small steps
steps:
  - step_id: many
    type: loop
    items: [""" + ", ".join(str(i) for i in range(300)) + """]
    step:
      step_id: note
      action: send_notification
      params: {message: "item", channel: log}
"""

SCRIPTS = {
    "wait.sh": "#!/bin/sh\nexec sleep 600\n",
    "fail.sh": "#!/bin/sh\necho failing on purpose >&2\nexit 3\n",
}


def start_daemon(tmp_path: Path, config_overrides: Mapping[str, Mapping[str, Any]] | None = None,
                 *, user_mode: bool = True) -> DaemonProcess:
    overrides = {"logging": {"level": "warning"}}
    for section, values in (config_overrides or {}).items():
        overrides.setdefault(section, {}).update(values)  # type: ignore[attr-defined]
    d = DaemonProcess(tmp_path, workflows={"notify3": NOTIFY, "blocking": BLOCKING, "failing": FAILING,
                                           "contain": CONTAIN, "chatty": CHATTY},
                      scripts=SCRIPTS, config_overrides=overrides, user_mode=user_mode)
    d.start()
    return d


def sddctl(d: DaemonProcess, *args: str, env: Mapping[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Runs the real console script against the daemon's socket (no colour: stdout is a pipe)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SDD_")}
    full_env.update({"SDD_SOCKET": str(d.socket)})
    full_env.update(env or {})
    return subprocess.run([SDDCTL, *args], env=full_env, capture_output=True, text=True, timeout=timeout, check=False)


TERMINAL = {"completed", "failed", "rolled_back", "cancelled", "interrupted"}


def wait_run(d: DaemonProcess, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The run as stored once it has reached a final status (polled with a deadline)."""
    from sdd_client.client import Client

    with Client(d.socket) as c:
        deadline = time.monotonic() + timeout
        while (run := c.call("runs.get", run_id=run_id))["status"] not in TERMINAL:
            assert time.monotonic() < deadline, f"run {run_id} still {run['status']}"
            time.sleep(0.02)
    return run
