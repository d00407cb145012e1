"""Fixtures for the sddctl tests: one real daemon per module (its tests do not disturb each other)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.live import start_daemon
from tests.support.daemon import DaemonProcess


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("api"))
    try:
        yield d
    finally:
        d.close()
