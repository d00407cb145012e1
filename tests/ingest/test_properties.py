"""Property tests: no input line crashes an adapter, and every line ends as a detection written or a rejection
reported with its number (for YARA: part of exactly one detection, rejection or non-detection)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sdd_client import detection, spoolfile
from sdd_client.ingest.falco import FalcoAdapter
from sdd_client.ingest.jsonl import JsonlAdapter
from sdd_client.ingest.main import Ingest
from sdd_client.ingest.yara import YaraAdapter

from tests.ingest.conftest import make_spool

_text = st.one_of(st.text(max_size=30), st.sampled_from(["\udcff", "\ud800", "\x00", "\ufffd", "/tmp/x", "sdd:m"]))
_scalar = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=False, allow_infinity=False), _text)
_json = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(_text, inner, max_size=4)), max_leaves=10)
_falco_event = st.fixed_dictionaries({}, optional={
    "rule": _scalar, "time": st.one_of(_scalar, st.just("2026-11-25T10:20:05.408091526Z")),
    "priority": st.one_of(_scalar, st.sampled_from(["Critical", "Warning", "Debug"])), "hostname": _scalar,
    "tags": st.one_of(_json, st.lists(_text, max_size=3)), "source": _scalar,
    "output_fields": st.one_of(_json, st.fixed_dictionaries({}, optional={
        "proc.pid": _scalar, "proc.pid.ts": _scalar, "proc.exepath": _scalar, "fd.name": _scalar,
        "user.name": _scalar, "container.id": _scalar}))})


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()  # ensure_ascii: surrogates travel as \uXXXX escapes, as a producer may


def _line(events: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.one_of(events.map(_encode), _json.map(_encode), st.binary(max_size=80).filter(lambda b: b"\n" not in b))


@pytest.fixture(scope="module")
def shm_spool() -> Iterator[Path]:
    # tmpfs: the property tests write thousands of files; they test accounting, not durability.
    root = Path(tempfile.mkdtemp(prefix="sdd-prop-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        yield make_spool(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(adapter: Any, lines: list[bytes], spool: Path) -> Ingest:
    err = io.StringIO()
    with spoolfile.SpoolWriter(str(spool)) as writer:
        ingest = Ingest(writer, adapter.name, err)
        outcomes = [o for i, line in enumerate(lines, 1) for o in adapter.feed(i, line)] + list(adapter.end())
        covered = sorted(n for o in outcomes for n in o.lines)
        assert covered == list(range(1, len(lines) + 1)), "a line is in no outcome, or in two"
        ingest.lines = len(lines)
        ingest.handle(outcomes)
    # Each rejection and each failed write is reported once, on its own line, naming its input line(s).
    reports = [r for r in err.getvalue().splitlines() if not r.split(": ", 3)[-1].startswith("warning:")]
    assert len(reports) == ingest.rejected + ingest.failed
    assert all(re.match(r"sdd-ingest: \w+: lines? \d+(-\d+)?: .", r) for r in reports), reports
    for name in os.listdir(spool / "new"):  # what was written, the daemon would take
        raw = (spool / "new" / name).read_bytes()
        assert detection.check(raw)[1] == [], raw[:200]
        os.unlink(spool / "new" / name)
    assert os.listdir(spool / "tmp") == []
    return ingest


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_line(_falco_event), min_size=1, max_size=8))
def test_falco_lines_are_each_written_or_rejected(shm_spool: Path, lines: list[bytes]) -> None:
    ingest = _run(FalcoAdapter(), lines, shm_spool)
    assert ingest.written + ingest.rejected == len(lines) and ingest.failed == 0 and ingest.ignored == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_line(st.dictionaries(_text, _json, max_size=4).map(lambda d: {"type": "m", **d})),
                min_size=1, max_size=8))
def test_jsonl_lines_are_each_written_or_rejected(shm_spool: Path, lines: list[bytes]) -> None:
    ingest = _run(JsonlAdapter(), lines, shm_spool)
    assert ingest.written + ingest.rejected == len(lines) and ingest.failed == 0


_yara_line = st.one_of(
    st.builds(lambda rule, path: f"{rule} {path}".encode("utf-8", "surrogateescape"),
              st.sampled_from(["Evil", "ns:Evil", "Evil [t1,t2]", 'Evil [a="x]",n =1]', "Evil [] [k=true]"]),
              st.sampled_from(["/tmp", "/nonexistent/a b", "/nonexistent/\udcff", "relative", "/"])),
    st.sampled_from([b"0x10:$a: data", b"0x0:4:$b", b"", b"{}", b'{"path": "/x", "rules": [{"identifier": "R"}]}']),
    st.binary(max_size=60).filter(lambda b: b"\n" not in b),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_yara_line, min_size=1, max_size=10))
def test_yara_lines_are_each_accounted_for(shm_spool: Path, lines: list[bytes]) -> None:
    _run(YaraAdapter(), lines, shm_spool)
