"""Fixtures for the fleet tests: a real nats-server with JetStream, and real daemons."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import make_daemon
from tests.support.nats import NatsServer

__all__ = ["make_daemon"]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path) as server:
        yield server


def notify_workflow(workflow_id: str = "notify", trigger_type: str = "malware") -> str:
    """One cheap idempotent step: runs complete, no host change (only the detection is exported)."""
    return (f"workflow_id: {workflow_id}\ntrigger:\n  type: {trigger_type}\nsteps:\n"
            f"  - step_id: note\n    action: send_notification\n"
            f"    params: {{message: \"{{{{ detection.file_path }}}}\", channel: log}}\n")


def quarantine_workflow(workflow_id: str = "contain") -> str:
    """Quarantine the detected file (a host change: a File Remediation event from the vault ledger)."""
    return (f"workflow_id: {workflow_id}\ntrigger:\n  type: malware\nsteps:\n"
            f"  - step_id: quarantine\n    action: quarantine_file\n"
            f"    params: {{file_path: \"{{{{ detection.file_path }}}}\"}}\n")
