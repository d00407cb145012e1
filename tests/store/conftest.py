"""Fixtures for the store tests: a real SQLite file in a temporary state directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sdd.store import Store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "sdd.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    s = Store.open(db_path)
    try:
        yield s
    finally:
        s.close()
