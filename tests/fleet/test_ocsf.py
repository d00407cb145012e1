"""The OCSF mapping: every kind of event validates against the OCSF 1.7.0 schema of its class, and every id
sdd uses is the one the schema gives that name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sdd.fleet import ocsf
from sdd.store.outbox import StepRow

HERE = Path(__file__).parent / "ocsf"
CAPTIONS = json.loads((HERE / "captions.json").read_text())
CLASS_FILES = {2004: "detection_finding", 7002: "file_remediation_activity", 7003: "process_remediation_activity",
               7004: "network_remediation_activity"}
_validators: dict[int, Any] = {}


def validate(event: dict[str, Any]) -> None:
    cls = event["class_uid"]
    if cls not in _validators:
        schema = json.loads((HERE / f"{CLASS_FILES[cls]}.json").read_text())
        _validators[cls] = jsonschema.Draft202012Validator(schema)
    errors = sorted(_validators[cls].iter_errors(event), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


def mapper() -> ocsf.OcsfMapper:
    return ocsf.OcsfMapper("host-a.example", "0.1.0")


def step(action: str, status: str, result: Any = None, error: str | None = None, params: Any = None) -> StepRow:
    return StepRow("r" * 32, "wf", "7", "run", "s1", action, status, 1, 1764064800.0, 1764064800.25,
                   params or {"file_path": "/home/a/x.exe"}, result, error)


def test_class_and_category_ids_are_the_schemas() -> None:
    classes = CAPTIONS["classes"]
    for cls, name in CLASS_FILES.items():
        assert classes[name]["uid"] == cls
        assert ocsf.CLASS_NAMES[ocsf.EventClass(cls)] == classes[name]["caption"]
        assert ocsf.CATEGORY_NAMES[ocsf.Category(classes[name]["category_uid"])] == classes[name]["category_name"]
    assert classes["detection_finding"]["category_uid"] == ocsf.Category.FINDINGS == 2
    assert classes["file_remediation_activity"]["category_uid"] == ocsf.Category.REMEDIATION == 7


def test_activity_severity_and_status_ids_are_the_schemas() -> None:
    finding = CAPTIONS["classes"]["detection_finding"]["enums"]
    for act, name in ocsf.ACTIVITY_NAMES.items():
        assert finding["activity_id"][str(int(act))] == name
    for sev, name in ocsf.SEVERITY_NAMES.items():
        assert finding["severity_id"][str(int(sev))] == name
    assert finding["status_id"][str(ocsf.FINDING_STATUS_NEW)] == "New"
    for cls in ("file_remediation_activity", "process_remediation_activity", "network_remediation_activity"):
        enums = CAPTIONS["classes"][cls]["enums"]
        for act, name in ocsf.REMEDIATION_NAMES.items():
            assert enums["activity_id"][str(int(act))] == name
        for st, name in ocsf.STATUS_NAMES.items():
            assert enums["status_id"][str(int(st))] == name
    objects = CAPTIONS["objects"]
    assert objects["file"]["type_id"][str(ocsf.FILE_TYPE_REGULAR)] == "Regular File"
    assert objects["fingerprint"]["algorithm_id"][str(ocsf.HASH_SHA256)] == "SHA-256"
    assert objects["device"]["type_id"][str(ocsf.DEVICE_TYPE_UNKNOWN)] == "Unknown"
    assert objects["malware"]["classification_ids"][str(ocsf.MALWARE_CLASS_UNKNOWN)] == "Unknown"
    assert ocsf.OCSF_VERSION == CAPTIONS["version"]


def test_a_detection_is_a_detection_finding() -> None:
    data = {"id": "clam-1", "type": "malware", "severity": "critical", "file_path": "/home/alice/invoice.exe",
            "threat_name": "Win.Trojan.Agent", "process_id": 4242, "process_start_time": 1764064800.12,
            "scanner": "clamav", "sha256": "ab" * 32, "detected_at": "2026-11-25T10:00:00Z"}
    event = mapper().detection_finding("uid-1", "7", data, 1764064800.5, None)
    validate(event)
    assert event["class_uid"] == 2004 and event["activity_id"] == 1 and event["type_uid"] == 200401
    assert event["severity_id"] == 5 and event["time"] == 1764064800500
    assert event["metadata"]["uid"] == "uid-1" and event["metadata"]["version"] == "1.7.0"
    assert event["device"]["hostname"] == "host-a.example"
    assert event["finding_info"]["uid"] == "clam-1"
    assert event["evidences"][0]["file"]["path"] == "/home/alice/invoice.exe"
    assert event["evidences"][0]["process"]["pid"] == 4242
    assert event["malware"][0]["name"] == "Win.Trojan.Agent"


@pytest.mark.parametrize("data", [
    {"type": "malware"},
    {"type": "x", "severity": 3, "file_path": 7, "process_id": "4242", "threat_name": ["a"], "id": True},
    {"type": "y", "severity": "bogus", "file_path": "/", "process_id": -1, "sha256": "zz"},
])
def test_a_detection_with_odd_fields_still_validates(data: dict[str, Any]) -> None:
    event = mapper().detection_finding("u", "1", data, 1.0, None)
    validate(event)
    assert event["severity_id"] == 0


def test_a_repeat_of_a_producers_id_updates_the_finding() -> None:
    event = mapper().detection_finding("u2", "8", {"type": "malware", "id": "clam-1"}, 2.0, "7")
    validate(event)
    assert event["activity_id"] == 2 and event["finding_info"]["uid"] == "clam-1"
    assert event["unmapped"]["sdd"]["duplicate_of"] == "7"


def test_quarantine_and_restore_are_file_remediation() -> None:
    row = {"id": "q" * 32, "sha256": "cd" * 32, "size": 12, "original_path": "/home/a/x.exe", "run_id": "r1",
           "detection_id": "clam-1", "threat_name": "T", "quarantined_at": 10.0, "restored_at": 20.0,
           "restored_to": "/home/a/x.exe.restored-1"}
    q = mapper().ledger_event("u3", row, ocsf.RemediationActivity.ISOLATE)
    r = mapper().ledger_event("u4", row, ocsf.RemediationActivity.RESTORE)
    for event in (q, r):
        validate(event)
        assert event["class_uid"] == 7002 and event["category_uid"] == 7 and event["status_id"] == 1
        assert event["command_uid"] == "q" * 32 and event["file"]["hashes"][0]["value"] == "cd" * 32
    assert q["activity_id"] == 1 and q["time"] == 10000
    assert r["activity_id"] == 3 and r["time"] == 20000


def test_delete_and_kill_steps_are_remediation_events() -> None:
    d = mapper().step_event("u5", step("delete_file", "completed", {"deleted": True, "file_path": "/home/a/x.exe",
                                                                   "sha256": "ef" * 32, "size": 3}))
    k = mapper().step_event("u6", step("kill_process", "completed",
                                       {"process_id": 99, "start_time": 5.5, "terminated": [99], "killed": []},
                                       params={"process_id": 99}))
    assert d is not None and k is not None
    validate(d)
    validate(k)
    assert (d["class_uid"], d["activity_id"], d["status_id"]) == (7002, 2, 1)
    assert (k["class_uid"], k["activity_id"], k["process"]["pid"]) == (7003, 2, 99)
    assert d["command_uid"] == "r" * 32 + ":s1"


def test_a_guard_refusal_is_a_failure_naming_the_guard() -> None:
    event = mapper().step_event("u7", step("quarantine_file", "failed", None,
                                           "RateLimited: rate limit for quarantine_file reached (120 per 60 s)"))
    assert event is not None
    validate(event)
    assert event["status_id"] == 2 and event["status_code"] == "RateLimited"
    assert event["unmapped"]["sdd"]["guard"] == "RateLimited"
    assert ocsf.guard_refusal("Forbidden: kill_process: pid 1 is protected") == "Forbidden"
    assert ocsf.guard_refusal("ActionError: disk full") is None


def test_what_did_not_act_is_not_an_event() -> None:
    m = mapper()
    assert m.step_event("u", step("quarantine_file", "completed", {"quarantine_id": "q"})) is None  # the ledger's
    assert m.step_event("u", step("delete_file", "completed", {"dry_run": True})) is None
    assert m.step_event("u", step("run_script", "completed", {})) is None
    interrupted = m.step_event("u", step("delete_file", "interrupted"))
    assert interrupted is not None and interrupted["status_id"] == 0
    validate(interrupted)


def test_network_remediation_class_validates() -> None:
    # No built-in action contains the network yet; the class is ready for one (ids checked above).
    base = mapper()._base("u8", ocsf.EventClass.NETWORK_REMEDIATION, 1, "Isolate", 1, ocsf.Severity.INFORMATIONAL)
    validate({**base, "command_uid": "c", "connection_info": {"direction_id": 2}})
