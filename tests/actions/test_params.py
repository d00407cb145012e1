"""Properties of the path checks every file action relies on."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sdd.engine import InvalidParams
from sdd.executor.paths import checked_abs_path, under_roots


def _fail(name: str, message: str) -> InvalidParams:
    return InvalidParams(f"{name}: {message}")


segments = st.sampled_from(["home", "alice", "..", ".", "", "x.exe", "tmp", "a b", "é"])


@given(st.lists(segments, max_size=8), st.booleans())
def test_accepted_paths_are_normal_and_roots_are_strict(parts: list[str], absolute: bool) -> None:
    raw = ("/" if absolute else "") + "/".join(parts)
    try:
        path = checked_abs_path(raw, _fail, "p")
    except InvalidParams:
        assert not absolute or ".." in parts or "." in parts or not [p for p in parts if p]
        return
    assert path.startswith("/") and "//" not in path and not path.endswith("/")
    assert "/../" not in path + "/" and "/./" not in path + "/"
    if under_roots(path, ["/home"]):
        assert path.startswith("/home/")
    assert not under_roots("/home", ["/home"]) and not under_roots("/homer/x", ["/home"])
