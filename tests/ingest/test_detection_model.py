"""The detection model: the published schema, `sddctl validate-detection`, and the daemon agree on which spool
files are accepted — on a corpus of good and hostile files, on generated ones, and through a running daemon."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sdd_client import detection

from sdd.intake.spool import SpoolRejection, parse_detection
from sdd.store.errors import StoreValueError
from sdd.store.writes import record_detection_op
from tests.api.live import SDDCTL
from tests.support.daemon import DaemonProcess

MIB = 1024 * 1024


def daemon_accepts(raw: bytes) -> bool:
    """What the daemon does with a spool file: size limit, sdd/intake/spool.py's parser, then the store's checks."""
    if len(raw) > MIB:
        return False
    try:
        obj = parse_detection(raw)
        record_detection_op(obj, "spool-name", None, "queued", None)
    except (SpoolRejection, StoreValueError):
        return False
    return True


def client_accepts(raw: bytes) -> bool:
    return not detection.check(raw)[1]


def nested(depth: int) -> bytes:
    return b'{"type": "m", "x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def padded(size: int) -> bytes:
    head = b'{"type": "malware", "pad": "'
    return head + b"a" * (size - len(head) - 2) + b'"}'


# (name, bytes, accepted, the schema alone can say it)
CORPUS: list[tuple[str, bytes, bool, bool]] = [
    ("minimal", b'{"type": "malware"}', True, True),
    ("contract example", json.dumps({
        "id": "optional unique id (dedup key)", "type": "malware", "severity": "critical",
        "file_path": "/home/alice/Downloads/invoice.exe", "threat_name": "Win.Trojan.Agent", "process_id": 4242,
        "process_start_time": 1764064800.12, "scanner": "clamav", "detected_at": "2026-11-25T10:00:00Z"}).encode(),
     True, True),
    ("integer id", b'{"type": "m", "id": 42}', True, True),
    ("id of 1024 characters", json.dumps({"type": "m", "id": "i" * 1024}).encode(), True, True),
    ("non-UTF-8 file name bytes", b'{"type": "malware", "file_path": "/tmp/\\udcff\\udcfe.exe"}', True, False),
    ("numeric severity (passed on as is)", b'{"type": "m", "severity": 5, "file_path": 7}', True, True),
    ("type with spaces around", b'{"type": "  m  "}', True, True),
    ("emoji and NUL", json.dumps({"type": "m\u2603", "threat_name": "x\x00y \U0001F600"}).encode(), True, True),
    ("nested 64 levels", nested(64), True, False),
    ("exactly 1 MiB", padded(MIB), True, True),
    ("threat name of 65536 characters", json.dumps({"type": "m", "threat_name": "t" * 65536}).encode(), True, True),
    ("empty", b"", False, False),
    ("blank", b" \n\t", False, False),
    ("not UTF-8", b'{"type": "m\xff"}', False, False),
    ("truncated JSON", b'{"type": "malw', False, False),
    ("NaN", b'{"type": "m", "x": NaN}', False, False),
    ("an array", b'[{"type": "m"}]', False, True),
    ("a string", b'"malware"', False, True),
    ("no type", b'{"severity": "high"}', False, True),
    ("empty type", b'{"type": ""}', False, True),
    ("blank type", b'{"type": " \\t\\n"}', False, True),
    ("Unicode-blank type", b'{"type": "\\u2003\\u3000\\u001c"}', False, True),
    ("numeric type", b'{"type": 5}', False, True),
    ("boolean id", b'{"type": "m", "id": true}', False, True),
    ("fractional id", b'{"type": "m", "id": 1.5}', False, True),
    ("id written 1.0", b'{"type": "m", "id": 1.0}', False, False),
    ("list id", b'{"type": "m", "id": [1]}', False, True),
    ("id of 1025 characters", json.dumps({"type": "m", "id": "i" * 1025}).encode(), False, True),
    ("id of 300 NULs (1200 stored)", json.dumps({"type": "m", "id": "\x00" * 300}).encode(), False, False),
    ("integer id of 1025 digits", b'{"type": "m", "id": ' + b"9" * 1025 + b"}", False, False),
    ("type of 1025 characters", json.dumps({"type": "t" * 1025}).encode(), False, True),
    ("file path of 65537 characters", json.dumps({"type": "m", "file_path": "/" * 65537}).encode(), False, True),
    ("nested 65 levels", nested(65), False, False),
    ("lone high surrogate", b'{"type": "m", "x": "\\ud800"}', False, False),
    ("surrogate that is no file-name byte", b'{"type": "m", "x": "\\udc7f"}', False, False),
    ("1 MiB and one byte", padded(MIB + 1), False, False),
]


@pytest.mark.parametrize("name, raw, accepted, _schema_only", CORPUS, ids=[c[0] for c in CORPUS])
def test_client_and_daemon_agree_on_the_corpus(name: str, raw: bytes, accepted: bool, _schema_only: bool) -> None:
    assert daemon_accepts(raw) is accepted, name
    _, errors = detection.check(raw)
    assert (not errors) is accepted, (name, errors)
    if not accepted:
        assert errors and all(isinstance(e, str) and e for e in errors)


def test_the_schema_is_valid_json_schema_and_says_what_the_validator_says() -> None:
    document = json.loads(Path(detection.SCHEMA_FILE).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(document)
    validator = jsonschema.Draft202012Validator(document)
    for name, raw, accepted, schema_only in CORPUS:
        if not schema_only:
            continue  # a rule outside JSON Schema (UTF-8, size, nesting, surrogates, 1.0, stored lengths)
        assert validator.is_valid(json.loads(raw)) is accepted, name


def test_errors_name_the_field() -> None:
    _, errors = detection.check(b'{"type": "m", "id": true}')
    assert errors == ["field 'id': expected a string, an integer or null, got a boolean"]
    _, errors = detection.check(b'{"severity": "x"}')
    assert errors == ["field 'type': required"]
    _, errors = detection.check(b'{"type": "m", "x": "\\ud800"}')
    assert errors == ["the detection: invalid Unicode (lone surrogate U+D800, not a file-name byte)"]
    strict = detection.problems({"type": "m", "process_id": "42", "file_path": "rel", "severity": "urgent",
                                 "detected_at": "yesterday"}, strict=True)
    assert strict == ["field 'severity': 'urgent' is not one of critical, high, medium, low, info",
                      "field 'file_path': 'rel' is not an absolute path (without NUL)",
                      "field 'process_id': expected an integer, got a string",
                      "field 'detected_at': 'yesterday' is not an ISO 8601 time such as 2026-11-25T10:00:00Z"]


def test_the_interpreter_refuses_a_keyword_it_does_not_check() -> None:
    with pytest.raises(detection.SchemaError, match="additionalProperties"):
        detection.Schema({"type": "object", "additionalProperties": False})


_text = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "\u2003", "\x00", "\udcff", "\ud800x",
                                                          "i" * 1025, "\x00" * 300]))
_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                    _text)
_json = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                     max_leaves=12)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({}, optional={"type": _scalar, "id": _scalar, "severity": _scalar,
                                           "file_path": _scalar, "threat_name": _scalar, "extra": _json}),
       st.booleans())
def test_generated_detections_get_the_same_verdict(fields: dict, ascii_only: bool) -> None:
    text = json.dumps(fields, ensure_ascii=ascii_only)
    raw = text.encode("utf-8", "surrogatepass") if not ascii_only else text.encode()
    assert client_accepts(raw) is daemon_accepts(raw), raw[:300]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_get_the_same_verdict(raw: bytes) -> None:
    assert client_accepts(raw) is daemon_accepts(raw)


def test_validate_detection_exit_status_and_json(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_bytes(b'{"type": "falco", "process_id": "12"}')
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"type": "m", "id": [1]}')
    r = subprocess.run([SDDCTL, "validate-detection", str(good)], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "ok (1 warning)" in r.stdout and "process_id" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([SDDCTL, "validate-detection", "--strict", str(good)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 1 and "field 'process_id': expected an integer" in r.stdout
    r = subprocess.run([SDDCTL, "validate-detection", "--json", str(good), str(bad), str(tmp_path / "none")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert [f["valid"] for f in out["files"]] == [True, False, False] and out["valid"] is False
    assert out["files"][1]["errors"] == ["field 'id': expected a string, an integer or null, got an array"]
    assert "cannot read" in out["files"][2]["errors"][0]
    r = subprocess.run([SDDCTL, "validate-detection", "-"], input='{"type": "m"}', capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0 and r.stdout.startswith("-: ok")
    r = subprocess.run([SDDCTL, "validate-detection"], capture_output=True, text=True, check=False)
    assert r.returncode == 2


def test_a_running_daemon_takes_exactly_the_files_validate_detection_accepts(tmp_path: Path) -> None:
    # Through the front door: the corpus dropped into a live spool, and the CLI run on the same files.
    files = tmp_path / "corpus"
    files.mkdir()
    names = {}
    for i, (name, raw, accepted, _) in enumerate(CORPUS):
        path = files / f"c{i:02d}.json"
        path.write_bytes(raw)
        names[path.name] = (name, accepted)
    r = subprocess.run([SDDCTL, "validate-detection", "--json", *sorted(str(p) for p in files.iterdir())],
                       capture_output=True, text=True, check=False)
    verdicts = {Path(f["file"]).name: f["valid"] for f in json.loads(r.stdout)["files"]}
    assert verdicts == {n: accepted for n, (_, accepted) in names.items()}
    with DaemonProcess(tmp_path / "d") as d:
        for path in sorted(files.iterdir()):
            d.drop(path.read_bytes(), name=path.name)
        d.wait_for(lambda: not d.spool_files("new") and not d.spool_files("cur"), what="the spool to drain")
        rejected = {n for n in d.spool_files("rejected") if not n.endswith(".reason")}
        recorded = {row[0] for row in d.query("SELECT spool_name FROM detections")}
    assert rejected == {n for n, (_, accepted) in names.items() if not accepted}
    assert recorded == {n for n, (_, accepted) in names.items() if accepted}
    assert not os.listdir(d.spool / "tmp")
