"""What the intake accepts and why it refuses the rest (pure parsing, and reading real files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sdd.intake.spool import SpoolRejection, parse_detection, read_spool_file


def test_accepts_one_object_with_a_string_type() -> None:
    assert parse_detection(b'{"type": "malware", "file_path": "/tmp/x", "n": 1}')["n"] == 1
    # The positive control of the range check: large, small and tiny finite numbers are kept as they are.
    kept = parse_detection(b'{"type": "m", "a": 1.7976931348623157e308, "b": -2.5e-300, "c": 1e-999}')
    assert kept["a"] == 1.7976931348623157e308 and kept["b"] == -2.5e-300 and kept["c"] == 0.0


@pytest.mark.parametrize("raw, reason", [
    (b"", "empty file"),
    (b"   \n", "empty file"),
    (b"{not json", "invalid JSON"),
    (b"\x00\x01\x02\xff\xfe binary", "not valid UTF-8"),
    (b"\xc3\x28", "not valid UTF-8"),
    (b'[{"type": "malware"}]', "expected one JSON object, got an array"),
    (b'"malware"', "expected one JSON object, got a string"),
    (b'{"severity": "high"}', "field 'type'"),
    (b'{"type": 3}', "field 'type'"),
    (b'{"type": ""}', "field 'type'"),
    (b'{"type": "m", "id": {"a": 1}}', "field 'id'"),
    (b'{"type": "m", "x": NaN}', "invalid JSON"),
    (b'{"type": "m", "x": Infinity}', "invalid JSON"),
    (b'{"type": "m", "x": 1e999}', "number 1e999 is out of range"),
    (b'{"type": "m", "x": [-1E400]}', "number -1E400 is out of range"),
    (b'{"type": "m", "x": 1' + b"0" * 400 + b'.0}', "is out of range"),
    (b'{"type": "m", "x": "\\ud800"}', "lone surrogate"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"type": "m", "x": ' + b"[" * 100 + b"]" * 100 + b"}", "nested deeper than"),
])
def test_rejects_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(SpoolRejection) as exc:
        parse_detection(raw)
    assert reason in str(exc.value)


def test_reading_refuses_symlinks_fifos_directories_and_oversize(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to("/etc/shadow")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "big").write_bytes(b" " * 2048)
    (tmp_path / "ok").write_text(json.dumps({"type": "m"}))
    os.link(tmp_path / "ok", tmp_path / "ok2")
    (tmp_path / "fine").write_text(json.dumps({"type": "m"}))
    for name, reason in [("link", "symbolic link"), ("fifo", "FIFO"), ("dir", "directory"),
                         ("big", "too large"), ("ok", "hard links")]:
        with pytest.raises(SpoolRejection, match=reason):
            read_spool_file(tmp_path / name, 1024)
    assert read_spool_file(tmp_path / "fine", 1024) == b'{"type": "m"}'


def test_read_spool_file_reads_exactly_up_to_the_limit(tmp_path: Path) -> None:
    """It reads by the file's size (not a limit-sized buffer per file): the boundaries stay exact."""
    (tmp_path / "at").write_bytes(b"x" * 1024)
    (tmp_path / "over").write_bytes(b"x" * 1025)
    (tmp_path / "empty").write_bytes(b"")
    assert read_spool_file(tmp_path / "at", 1024) == b"x" * 1024
    assert read_spool_file(tmp_path / "empty", 1024) == b""
    with pytest.raises(SpoolRejection, match="too large"):
        read_spool_file(tmp_path / "over", 1024)
