"""add_exclusion / remove_exclusion / log_false_positive, without a store and with a real one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sdd.engine import InvalidParams

from .conftest import Env

SHA = hashlib.sha256(b"x").hexdigest()


async def test_without_store_exclusions_are_kept_in_memory(env: Env) -> None:
    res = await env.call("add_exclusion", sha256=SHA.upper(), path=str(env.root / "a"), reason="vendor tool")
    assert {(e["kind"], e["value"]) for e in res["excluded"]} == {("sha256", SHA), ("path", str(env.root / "a"))}
    assert ("sha256", SHA) in env.services.memory_exclusions
    res = await env.call("remove_exclusion", sha256=SHA)
    assert res["removed"] == [{"kind": "sha256", "value": SHA, "existed": True}]
    await env.call("log_false_positive", sha256=SHA, reason="signed binary")
    assert env.services.memory_false_positives[0]["reason"] == "signed binary"


async def test_with_store_an_excluded_hash_and_path_are_excluded(env: Env, tmp_path: Path) -> None:
    from sdd.store import Store
    store = Store.open(tmp_path / "sdd.db")
    try:
        env.configure(store=store)
        await env.call("add_exclusion", sha256=SHA, reason="fp")
        await env.call("add_exclusion", path="/opt/vendor", reason="fp")
        assert store.is_excluded(sha256=SHA)
        assert store.is_excluded(path="/opt/vendor/bin/tool")
        await env.call("remove_exclusion", path="/opt/vendor")
        assert not store.is_excluded(path="/opt/vendor/bin/tool")
        await env.step("log_false_positive", {"reason": "fp"},
                       detection={"id": "ext-1", "file_path": "/home/a/x", "threat_name": "T"})
        [row] = store.list_false_positives()
        assert row["file_path"] == "/home/a/x" and row["threat_name"] == "T"
    finally:
        store.close()


@pytest.mark.parametrize("action", ["add_exclusion", "remove_exclusion"])
@pytest.mark.parametrize("params, message", [
    ({}, "give sha256 or path"), ({"sha256": "abc"}, "64 hexadecimal"), ({"sha256": 5}, "expected a string"),
    ({"path": "relative"}, "absolute"), ({"path": "/a/../etc"}, r"'\.\.'"), ({"bogus": 1}, "unknown")])
async def test_bad_parameters(env: Env, action: str, params: dict, message: str) -> None:
    with pytest.raises(InvalidParams, match=message):
        await env.call(action, **params)
    assert env.services.memory_exclusions == set()
