"""Fixtures for the daemon's tests: workflows with cheap actions (no ClamAV), and a real daemon."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, make_daemon
from tests.support.workflows import notify_workflow

__all__ = ["make_daemon"]  # the shared factory fixture, available to every test here


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A running daemon with the five-step notification workflow, stopped (SIGTERM) at teardown."""
    with DaemonProcess(tmp_path, workflows={"notify5": notify_workflow()},
                       config_overrides={"logging": {"level": "warning"}}) as d:
        yield d
