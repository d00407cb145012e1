"""Fixtures for the socket API tests: one real daemon per module (its tests do not disturb each other)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.daemon import DaemonProcess

from .live import start_daemon


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("api"))
    try:
        yield d
    finally:
        d.close()
