"""Workflows (and a script) for tests that run a real daemon: cheap actions, no ClamAV."""

from __future__ import annotations

from pathlib import Path


def notify_workflow(workflow_id: str = "notify5", steps: int = 5, trigger_type: str = "malware",
                    extra: str = "") -> str:
    """A workflow of `steps` send_notification steps on the `log` channel: cheap and idempotent."""
    body = "".join(
        f"  - step_id: s{i}\n    action: send_notification\n"
        f"    params: {{message: \"{workflow_id} {{{{ detection.file_path }}}}\", channel: log}}\n"
        for i in range(steps))
    return f"workflow_id: {workflow_id}\ntrigger:\n  type: {trigger_type}\n{extra}steps:\n{body}"


# Appends the step's idempotency key to a log: every line is one real execution of a non-idempotent step.
APPEND_SCRIPT = """#!/bin/sh
printf '%s\\n' "$SDD_IDEMPOTENCY_KEY" >> "$1"
"""


def script_workflow(log_path: Path, workflow_id: str = "scripted") -> str:
    return f"""workflow_id: {workflow_id}
trigger: {{type: malware}}
steps:
  - step_id: before
    action: send_notification
    params: {{message: "before", channel: log}}
  - step_id: append
    action: run_script
    params: {{script: append.sh, args: ["{log_path}"]}}
  - step_id: after
    action: send_notification
    params: {{message: "after", channel: log}}
"""
