"""docs/api.md describes every method the server has."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_api_method_is_documented():
    from sdd.api.methods import METHODS

    doc = (ROOT / "docs" / "api.md").read_text()
    for name in [*METHODS, "subscribe"]:
        assert f"### `{name}`" in doc, name
