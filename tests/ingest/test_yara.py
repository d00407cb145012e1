"""`sdd-ingest --format yara` on the output of the real `yara` command line (Debian's yara 4.2) scanning real
files — names with spaces, newlines, non-UTF-8 bytes, and one built to fake a match line — and on YARA-X's
`--output-format ndjson` lines (YARA-X is not packaged here: those lines follow its cli/src/commands/scan.rs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sdd_client.ingest.outcome import Detection, Ignored, Rejected
from sdd_client.ingest.yara import YaraAdapter

from tests.ingest.conftest import run_ingest, spool_detections

YARA = shutil.which("yara")
pytestmark = pytest.mark.skipif(YARA is None, reason="yara is not installed (apt-get install yara)")

RULES = r"""
rule EvilMarker : dropper linux
{
    meta:
        severity = "critical"
        author = "sdd \"tests\" [x]"
        version = 3
        signed = true
    strings:
        $a = "SDD-YARA-TEST-MARKER"
    condition:
        $a
}

rule SecondMarker
{
    strings:
        $b = "SDD-SECOND-MARKER"
    condition:
        $b
}
"""


@pytest.fixture
def scan_dir(tmp_path: Path) -> tuple[Path, Path, dict[bytes, set[str]]]:
    """Files to scan and which rules each matches, as yara will report them (by path bytes)."""
    rules = tmp_path / "rules.yar"
    rules.write_text(RULES)
    top = tmp_path / "scan"
    (top / "sub dir").mkdir(parents=True)
    victim = tmp_path / "victim.txt"  # outside the scan, matches nothing: must never be named
    victim.write_text("innocent\n")
    files: dict[bytes, tuple[bytes, set[str]]] = {
        b"plain.exe": (b"xx SDD-YARA-TEST-MARKER xx", {"EvilMarker"}),
        b"sub dir/with space.exe": (b"SDD-YARA-TEST-MARKER", {"EvilMarker"}),
        b"both.bin": (b"SDD-YARA-TEST-MARKER SDD-SECOND-MARKER", {"EvilMarker", "SecondMarker"}),
        b"new\nline.exe": (b"SDD-SECOND-MARKER", {"SecondMarker"}),
        b"two\nnew\nlines": (b"SDD-YARA-TEST-MARKER", {"EvilMarker"}),
        b"bad\xff\xfename.bin": (b"SDD-YARA-TEST-MARKER", {"EvilMarker"}),
        # A name that, printed raw, looks like a second match line naming the victim.
        b"fake\nEvilMarker " + os.fsencode(victim): (b"SDD-YARA-TEST-MARKER", {"EvilMarker"}),
        b"clean.txt": (b"nothing to see", set()),
    }
    expected: dict[bytes, set[str]] = {}
    for name, (content, matched) in files.items():
        path = os.fsencode(top) + b"/" + name
        os.makedirs(os.path.dirname(path), exist_ok=True)  # the fake name holds a whole path below `top`
        with open(path, "wb") as fh:
            fh.write(content)
        if matched:
            expected[path] = matched
    return rules, top, expected


def yara(*args: str | bytes | Path) -> bytes:
    argv = [str(YARA), *(os.fsdecode(a) for a in args)]
    r = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def detections_by_path(spool: Path) -> dict[bytes, dict[str, Any]]:
    return {os.fsencode(d["file_path"]): d for d in spool_detections(spool)}


@pytest.mark.parametrize("options", [[], ["-g"], ["-m"], ["-s"], ["-e", "-g", "-m", "-s"], ["-p", "4", "-g"]],
                         ids=["plain", "tags", "meta", "strings", "everything", "threads"])
def test_real_yara_output_names_exactly_the_matched_files(scan_dir: Any, spool: Path, options: list[str]) -> None:
    rules, top, expected = scan_dir
    output = yara(*options, "-r", rules, top)
    assert b"fake\nEvilMarker /" in output  # the hostile name really prints as two "match" lines
    r = run_ingest("yara", output, spool)
    assert r.returncode == 0, r.stderr
    found = detections_by_path(spool)
    assert set(found) == set(expected), r.stderr
    for path, d in found.items():
        assert {rule["identifier"] for rule in d["yara"]["rules"]} == expected[path]
        assert d["type"] == "yara" and d["source"] == "yara" and d["scanner"] == "yara"
        assert d["threat_name"] in expected[path]
        assert os.path.lexists(path)  # every detection names a real file, byte for byte
    victim = os.fsencode(top.parent / "victim.txt")
    assert victim not in found


def test_tags_meta_and_strings_are_kept(scan_dir: Any, spool: Path) -> None:
    rules, top, _ = scan_dir
    run_ingest("yara", yara("-e", "-g", "-m", "-s", rules, top / "plain.exe"), spool)
    [d] = spool_detections(spool)
    [rule] = d["yara"]["rules"]
    assert rule == {"identifier": "EvilMarker", "namespace": "default", "tags": ["dropper", "linux"],
                    "meta": {"severity": "critical", "author": 'sdd \\"tests\\" [x]', "version": 3,
                             "signed": True}}
    assert d["severity"] == "critical"  # from the rule's meta
    assert d["yara"]["strings"] == ["0x3:$a: SDD-YARA-TEST-MARKER"]


def test_non_utf8_names_round_trip_through_the_spool(scan_dir: Any, spool: Path) -> None:
    rules, top, _ = scan_dir
    target = os.fsencode(top) + b"/bad\xff\xfename.bin"
    run_ingest("yara", yara(rules, target), spool)
    raw = os.listdir(spool / "new")
    assert len(raw) == 1
    text = (spool / "new" / raw[0]).read_bytes()
    assert b"\\udcff\\udcfe" in text  # escaped, so the spool file stays UTF-8
    [d] = spool_detections(spool)
    assert os.fsencode(d["file_path"]) == target


def test_an_ambiguous_name_is_read_as_the_longer_one_with_a_warning(tmp_path: Path, spool: Path) -> None:
    rules = tmp_path / "rules.yar"
    rules.write_text(RULES)
    top = tmp_path / "scan"
    top.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("SDD-YARA-TEST-MARKER")  # matches, but is not scanned
    (top / "amb").write_text("SDD-YARA-TEST-MARKER")
    fake = Path(f"{top}/amb\nEvilMarker {victim}")  # a directory "amb\nEvilMarker " holding tmp/.../victim
    fake.parent.mkdir(parents=True)
    fake.write_text("SDD-YARA-TEST-MARKER")
    r = run_ingest("yara", yara("-r", rules, top), spool)
    found = detections_by_path(spool)
    assert os.fsencode(victim) not in found
    assert os.fsencode(f"{top}/amb\nEvilMarker {victim}") in found
    assert "ambiguous output" in r.stderr


def test_lines_that_are_not_matches_are_rejected_with_their_number(spool: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text("x")
    data = (f"EvilMarker {real}\n").encode() + b"error scanning /x: could not open file\nRule relative/path\n\n"
    r = run_ingest("yara", data, spool)
    assert r.returncode == 0 and len(spool_detections(spool)) == 1
    assert "line 2: not a yara match line" in r.stderr and "line 3: not a yara match line" in r.stderr
    assert "line 4: blank line" in r.stderr


def ndjson(path: str, rules: list[dict[str, Any]]) -> bytes:
    return json.dumps({"path": path, "rules": rules}).encode()


def test_yara_x_ndjson(tmp_path: Path, spool: Path) -> None:
    hit = tmp_path / "hit.exe"
    hit.write_text("x")
    lines = [
        ndjson(str(hit), [{"identifier": "EvilMarker", "namespace": "default", "tags": ["dropper"],
                           "meta": [["severity", "medium"]],
                           "strings": [{"identifier": "$a", "offset": 3, "match": "SDD-YARA-TEST-MARKER"}]},
                          {"identifier": "SecondMarker"}]),
        ndjson(str(tmp_path / "clean"), []),  # scanned, nothing matched
        json.dumps({"count": 2, "path": str(hit)}).encode(),
        ndjson("relative/hit.exe", [{"identifier": "EvilMarker"}]),
        b'{"path": "/x", "rules": [{"no": "identifier"}]}',
        b'{"path": ',
    ]
    r = run_ingest("yara", b"\n".join(lines) + b"\n", spool)
    assert r.returncode == 0, r.stderr
    [d] = spool_detections(spool)
    assert d["file_path"] == str(hit) and d["scanner"] == "yara-x" and d["threat_name"] == "EvilMarker"
    assert d["yara"] == json.loads(lines[0]) and d["severity"] == "high"  # meta as pairs: not read
    assert r.summary == "sdd-ingest: yara: 6 lines: 1 detection written, 4 rejected, 1 not detections"
    assert "line 3: a --count line" in r.stderr and "line 4: 'path' is not an absolute path" in r.stderr


def test_every_line_is_accounted_for() -> None:
    adapter = YaraAdapter()
    lines = [b"EvilMarker /nonexistent/a", b"0x0:$a: X", b"SecondMarker /nonexistent/a", b"junk",
             b"EvilMarker /nonexistent/b", b'{"path": "/nonexistent/c", "rules": []}']
    outcomes = [o for i, line in enumerate(lines, 1) for o in adapter.feed(i, line)] + list(adapter.end())
    covered = sorted(n for o in outcomes for n in o.lines)
    assert covered == list(range(1, len(lines) + 1))
    assert [type(o) for o in outcomes] == [Detection, Rejected, Detection, Ignored]
    assert outcomes[0].lines == (1, 2, 3)  # a match, its string line, and the same file's second rule


def test_a_files_rules_split_by_another_threads_lines_make_one_detection(tmp_path: Path) -> None:
    """yara prints each rule match under a lock, from 32 threads: seen here 1 run in 200 on the fixture
    above, where both.bin's second rule came after another file's match (so its first rule was lost)."""
    both, other = tmp_path / "both.bin", tmp_path / "other"
    both.write_text("x")
    other.write_text("x")
    lines = [f"EvilMarker {both}", "0x0:$a: SDD-YARA-TEST-MARKER", f"EvilMarker {other}",
             "0x3:$a: SDD-YARA-TEST-MARKER", f"SecondMarker {both}", "0x15:$b: SDD-SECOND-MARKER"]
    adapter = YaraAdapter()
    outcomes = [o for i, line in enumerate(lines, 1) for o in adapter.feed(i, line.encode())]
    assert outcomes == []  # both files may still get rules
    outcomes = list(adapter.end())
    assert [o.lines for o in outcomes] == [(1, 2, 5, 6), (3, 4)]
    first, second = (o.detection for o in outcomes if isinstance(o, Detection))
    assert first["file_path"] == str(both) and first["threat_name"] == "EvilMarker"
    assert [r["identifier"] for r in first["yara"]["rules"]] == ["EvilMarker", "SecondMarker"]
    assert first["yara"]["strings"] == ["0x0:$a: SDD-YARA-TEST-MARKER", "0x15:$b: SDD-SECOND-MARKER"]
    assert second["file_path"] == str(other) and [r["identifier"] for r in second["yara"]["rules"]] == \
        ["EvilMarker"]


def test_a_match_is_emitted_once_the_window_of_open_files_is_full() -> None:
    from sdd_client.ingest.yara import WINDOW

    adapter = YaraAdapter()
    emitted: list[Any] = []
    for i in range(WINDOW + 1):
        emitted.extend(adapter.feed(i + 1, f"EvilMarker /nonexistent/f{i}".encode()))
    assert emitted == []  # the newest match is still the one being read
    emitted.extend(adapter.feed(WINDOW + 2, b"EvilMarker /nonexistent/last"))
    assert [o.detection["file_path"] for o in emitted] == ["/nonexistent/f0"]  # the oldest, alone
    rest = list(adapter.end())
    assert [o.lines[0] for o in rest] == list(range(2, WINDOW + 3))  # the rest in order, each once
