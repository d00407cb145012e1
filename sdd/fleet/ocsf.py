"""OCSF 1.x events from sdd's history rows: pure functions, no I/O (they run inside the store's transaction).

Class, category, activity and enum ids are taken from the OCSF schema itself (github.com/ocsf/ocsf-schema,
release v1.7.0: `categories.json`, `events/findings/detection_finding.json`, `events/remediation/*.json`,
`dictionary.json`, `objects/*.json`); `tests/fleet/ocsf/` ships that release's class schemas, which the tests
validate every kind of event against, and checks each id below against the schema's captions.

- A detection row is a Detection Finding (2004), activity Create — or Update for a repeat of a producer's `id`.
- A quarantine (vault ledger row) is a File Remediation Activity (7002) Isolate; a restore (ledger row) is
  Restore, whether a workflow's rollback or `quarantine.restore` did it.
- A finished host-changing step is a Remediation event: `delete_file` File Evict, `kill_process` Process
  Remediation Activity (7003) Evict; a failed or interrupted `quarantine_file`/`restore_file` is its File
  event with the failure (a successful one is the ledger's event). A step refused by a guard (rate limit,
  circuit breaker, a safety rule) is a Failure whose `status_code` names the guard.
Every event has the `host` profile (`device.hostname`) and `metadata.uid` (stable: see store/outbox.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ..store.outbox import StepRow

OCSF_VERSION = "1.7.0"


class Category(IntEnum):
    FINDINGS = 2
    REMEDIATION = 7


class EventClass(IntEnum):
    DETECTION_FINDING = 2004
    FILE_REMEDIATION = 7002
    PROCESS_REMEDIATION = 7003
    NETWORK_REMEDIATION = 7004


CLASS_NAMES = {EventClass.DETECTION_FINDING: "Detection Finding",
               EventClass.FILE_REMEDIATION: "File Remediation Activity",
               EventClass.PROCESS_REMEDIATION: "Process Remediation Activity",
               EventClass.NETWORK_REMEDIATION: "Network Remediation Activity"}
CATEGORY_NAMES = {Category.FINDINGS: "Findings", Category.REMEDIATION: "Remediation"}


class FindingActivity(IntEnum):
    CREATE = 1
    UPDATE = 2


class RemediationActivity(IntEnum):
    ISOLATE = 1
    EVICT = 2
    RESTORE = 3


class Severity(IntEnum):
    UNKNOWN = 0
    INFORMATIONAL = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4
    CRITICAL = 5


class RemediationStatus(IntEnum):
    UNKNOWN = 0
    SUCCESS = 1
    FAILURE = 2
    DOES_NOT_EXIST = 3


FINDING_STATUS_NEW = 1            # detection_finding status_id 1 "New"
FILE_TYPE_REGULAR = 1             # file.type_id 1 "Regular File"
HASH_SHA256 = 3                   # fingerprint.algorithm_id 3 "SHA-256"
DEVICE_TYPE_UNKNOWN = 0           # device.type_id 0 "Unknown"
MALWARE_CLASS_UNKNOWN = 0         # malware.classification_ids 0 "Unknown"

ACTIVITY_NAMES = {FindingActivity.CREATE: "Create", FindingActivity.UPDATE: "Update"}
REMEDIATION_NAMES = {RemediationActivity.ISOLATE: "Isolate", RemediationActivity.EVICT: "Evict",
                     RemediationActivity.RESTORE: "Restore"}
SEVERITY_NAMES = {Severity.UNKNOWN: "Unknown", Severity.INFORMATIONAL: "Informational", Severity.LOW: "Low",
                  Severity.MEDIUM: "Medium", Severity.HIGH: "High", Severity.CRITICAL: "Critical"}
STATUS_NAMES = {RemediationStatus.UNKNOWN: "Unknown", RemediationStatus.SUCCESS: "Success",
                RemediationStatus.FAILURE: "Failure", RemediationStatus.DOES_NOT_EXIST: "Does Not Exist"}

# A detection's `severity` (sdd's vocabulary, and the common ones of producers) → OCSF severity_id.
_SEVERITY = {"critical": Severity.CRITICAL, "high": Severity.HIGH, "medium": Severity.MEDIUM,
             "moderate": Severity.MEDIUM, "low": Severity.LOW, "info": Severity.INFORMATIONAL,
             "informational": Severity.INFORMATIONAL}

# Errors of a step refused by a guard, as the engine describes them ("RateLimited: ...").
GUARD_ERRORS = ("RateLimited", "BreakerOpen", "Forbidden")


@dataclass(frozen=True, slots=True)
class _StepClass:
    event_class: EventClass
    activity: RemediationActivity
    success_from_ledger: bool = False  # a success is the ledger row's event, not the step's


STEP_CLASSES: Mapping[str, _StepClass] = {
    "quarantine_file": _StepClass(EventClass.FILE_REMEDIATION, RemediationActivity.ISOLATE, True),
    "restore_file": _StepClass(EventClass.FILE_REMEDIATION, RemediationActivity.RESTORE, True),
    "delete_file": _StepClass(EventClass.FILE_REMEDIATION, RemediationActivity.EVICT),
    "kill_process": _StepClass(EventClass.PROCESS_REMEDIATION, RemediationActivity.EVICT),
}


def guard_refusal(error: str | None) -> str | None:
    """The guard that refused a step ("RateLimited", "BreakerOpen", "Forbidden"), from its recorded error."""
    if not error:
        return None
    head = error.split(":", 1)[0]
    return head if head in GUARD_ERRORS else None


def severity_id(value: Any) -> Severity:
    return _SEVERITY.get(value.strip().lower(), Severity.UNKNOWN) if isinstance(value, str) else Severity.UNKNOWN


def ms(t: float | None) -> int | None:
    return None if t is None else round(t * 1000)


class OcsfMapper:
    """The store's `EventMapper`: one OCSF event as JSON text per exported history row."""

    def __init__(self, hostname: str, product_version: str) -> None:
        self.hostname = hostname
        self._product = {"name": "sdd", "vendor_name": "Search & Destroy", "version": product_version}
        self._device = {"hostname": hostname, "name": hostname, "type_id": DEVICE_TYPE_UNKNOWN}

    # --- the EventMapper protocol --------------------------------------------------------------------------
    def detection(self, uid: str, detection_id: str, data: Mapping[str, Any], received_at: float,
                  duplicate_of: str | None) -> str | None:
        return _encode(self.detection_finding(uid, detection_id, data, received_at, duplicate_of))

    def step(self, uid: str, row: StepRow) -> str | None:
        event = self.step_event(uid, row)
        return None if event is None else _encode(event)

    def quarantined(self, uid: str, row: Mapping[str, Any]) -> str | None:
        return _encode(self.ledger_event(uid, row, RemediationActivity.ISOLATE))

    def restored(self, uid: str, row: Mapping[str, Any]) -> str | None:
        return _encode(self.ledger_event(uid, row, RemediationActivity.RESTORE))

    # --- events as dicts -----------------------------------------------------------------------------------
    def _base(self, uid: str, cls: EventClass, activity: int, activity_name: str, time_ms: int,
              severity: Severity) -> dict[str, Any]:
        category = Category.FINDINGS if cls is EventClass.DETECTION_FINDING else Category.REMEDIATION
        return {
            "class_uid": int(cls), "class_name": CLASS_NAMES[cls],
            "category_uid": int(category), "category_name": CATEGORY_NAMES[category],
            "activity_id": activity, "activity_name": activity_name, "type_uid": int(cls) * 100 + activity,
            "type_name": f"{CLASS_NAMES[cls]}: {activity_name}",
            "time": time_ms, "severity_id": severity.value, "severity": SEVERITY_NAMES[severity],
            "metadata": {"version": OCSF_VERSION, "uid": uid, "product": self._product, "profiles": ["host"],
                         "logged_time": time_ms},
            "device": self._device,
        }

    def detection_finding(self, uid: str, detection_id: str, data: Mapping[str, Any], received_at: float,
                          duplicate_of: str | None) -> dict[str, Any]:
        activity = FindingActivity.CREATE if duplicate_of is None else FindingActivity.UPDATE
        severity = severity_id(data.get("severity"))
        threat = _text(data.get("threat_name"))
        dtype = _text(data.get("type")) or "detection"
        path = _text(data.get("file_path"))
        event = self._base(uid, EventClass.DETECTION_FINDING, int(activity), ACTIVITY_NAMES[activity],
                           ms(received_at) or 0, severity)
        external = data.get("id")
        finding: dict[str, Any] = {
            # The finding's identity: the producer's id when it gave one (a repeat updates the same finding).
            "uid": str(external) if isinstance(external, (str, int)) and not isinstance(external, bool)
            else f"sdd-detection-{uid}",
            "title": threat or dtype, "types": [dtype], "created_time": ms(received_at),
        }
        scanner = _text(data.get("scanner")) or _text(data.get("source"))
        if scanner:
            finding["product"] = {"name": scanner}
        event["finding_info"] = finding
        event["status_id"] = FINDING_STATUS_NEW
        event["status"] = "New"
        event["message"] = f"{threat or dtype}" + (f" in {path}" if path else "")
        evidence: dict[str, Any] = {}
        if path:
            evidence["file"] = _file(path, data.get("sha256"), None)
        pid = data.get("process_id")
        if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
            evidence["process"] = _process(pid, data.get("process_start_time"), _text(data.get("process_exe")))
        if evidence:
            event["evidences"] = [evidence]
        if threat:
            event["malware"] = [{"name": threat, "classification_ids": [MALWARE_CLASS_UNKNOWN]}]
        sdd: dict[str, Any] = {"detection_id": detection_id, "type": dtype}
        if duplicate_of is not None:
            sdd["duplicate_of"] = duplicate_of
        for key in ("severity", "detected_at", "source", "scanner"):
            if isinstance(data.get(key), (str, int, float)) and not isinstance(data.get(key), bool):
                sdd[key] = data[key]
        event["unmapped"] = {"sdd": sdd}
        return event

    def ledger_event(self, uid: str, row: Mapping[str, Any], activity: RemediationActivity) -> dict[str, Any]:
        restore = activity is RemediationActivity.RESTORE
        when = row.get("restored_at") if restore else row.get("quarantined_at")
        qid = str(row.get("id"))
        path = _text(row.get("original_path")) or ""
        event = self._base(uid, EventClass.FILE_REMEDIATION, int(activity), REMEDIATION_NAMES[activity],
                           ms(when) or 0, Severity.INFORMATIONAL)
        event["command_uid"] = qid  # the vault item: a restore names the quarantine it undoes
        event["file"] = _file(path, row.get("sha256"), row.get("size"))
        event.update(_status(RemediationStatus.SUCCESS))
        where = _text(row.get("restored_to")) if restore else None
        event["message"] = (f"restored {path}" + (f" as {where}" if where and where != path else "") if restore
                            else f"quarantined {path}")
        sdd = {k: row[k] for k in ("run_id", "detection_id", "threat_name") if row.get(k) is not None}
        sdd["quarantine_id"] = qid
        if where:
            sdd["restored_to"] = where
        event["unmapped"] = {"sdd": sdd}
        return event

    def step_event(self, uid: str, row: StepRow) -> dict[str, Any] | None:
        kind = STEP_CLASSES.get(row.action)
        if kind is None:
            return None
        result = row.result if isinstance(row.result, dict) else {}
        params = row.params if isinstance(row.params, dict) else {}
        if result.get("dry_run") is True:
            return None
        guard = guard_refusal(row.error) if row.status == "failed" else None
        if row.status == "completed":
            if kind.success_from_ledger:
                return None
            status = RemediationStatus.SUCCESS
            if result.get("already_absent") or result.get("already_gone"):
                status = RemediationStatus.DOES_NOT_EXIST
        elif row.status == "failed":
            status = RemediationStatus.DOES_NOT_EXIST if (row.error or "").startswith("NotFound") \
                else RemediationStatus.FAILURE
        else:  # interrupted: the outcome is not known, and the event does not pretend it is
            status = RemediationStatus.UNKNOWN
        severity = {RemediationStatus.SUCCESS: Severity.INFORMATIONAL,
                    RemediationStatus.DOES_NOT_EXIST: Severity.LOW,
                    RemediationStatus.UNKNOWN: Severity.MEDIUM}.get(status, Severity.HIGH)
        end = row.finished_at
        event = self._base(uid, kind.event_class, int(kind.activity), REMEDIATION_NAMES[kind.activity],
                           ms(end) or 0, severity)
        event["command_uid"] = f"{row.run_id}:{row.step_id}"  # = the step's idempotency key
        if kind.event_class is EventClass.PROCESS_REMEDIATION:
            pid = result.get("process_id", params.get("process_id"))
            start = result.get("start_time", params.get("process_start_time"))
            event["process"] = _process(pid if isinstance(pid, int) and not isinstance(pid, bool) else 0, start,
                                        None)
        else:
            path = (_text(result.get("original_path")) or _text(result.get("file_path"))
                    or _text(params.get("file_path")) or "")
            event["file"] = _file(path, result.get("sha256"), result.get("size"))
        event.update(_status(status, row.error, guard))
        if row.started_at is not None and end is not None:
            event["start_time"], event["end_time"] = ms(row.started_at), ms(end)
            event["duration"] = max(0, (ms(end) or 0) - (ms(row.started_at) or 0))
        what = {RemediationActivity.ISOLATE: "quarantine", RemediationActivity.EVICT:
                "kill" if kind.event_class is EventClass.PROCESS_REMEDIATION else "delete",
                RemediationActivity.RESTORE: "restore"}[kind.activity]
        event["message"] = f"{what} {row.status}" + (f" (refused: {guard})" if guard else "")
        sdd: dict[str, Any] = {"run_id": row.run_id, "step_id": row.step_id, "phase": row.phase,
                               "action": row.action, "status": row.status, "attempts": row.attempts}
        if row.workflow_id is not None:
            sdd["workflow_id"] = row.workflow_id
        if row.detection_id is not None:
            sdd["detection_id"] = row.detection_id
        if kind.event_class is EventClass.PROCESS_REMEDIATION:
            for key in ("terminated", "killed"):
                if isinstance(result.get(key), list):
                    sdd[key] = result[key]
        if guard:
            sdd["guard"] = guard
        event["unmapped"] = {"sdd": sdd}
        return event


def _status(status: RemediationStatus, error: str | None = None, guard: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"status_id": int(status), "status": STATUS_NAMES[status]}
    if guard:
        out["status_code"] = guard
    if error:
        out["status_detail"] = error[:2048]
    return out


def _file(path: str, sha256: Any, size: Any) -> dict[str, Any]:
    f: dict[str, Any] = {"name": os.path.basename(path) or path or "(unknown)", "type_id": FILE_TYPE_REGULAR,
                         "type": "Regular File"}
    if path:
        f["path"] = path
        parent = os.path.dirname(path)
        if parent:
            f["parent_folder"] = parent
    if isinstance(sha256, str) and len(sha256) == 64:
        f["hashes"] = [{"algorithm_id": HASH_SHA256, "algorithm": "SHA-256", "value": sha256.lower()}]
    if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
        f["size"] = size
    return f


def _process(pid: int, start_time: Any, exe: str | None) -> dict[str, Any]:
    p: dict[str, Any] = {"pid": pid}
    if isinstance(start_time, (int, float)) and not isinstance(start_time, bool) and start_time > 0:
        p["created_time"] = ms(float(start_time))
    if exe:
        p["file"] = _file(exe, None, None)
    return p


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _fallback(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# One C encoder built once (json.dumps builds a new one per call, most of its cost for a small event); the
# events hold only str/int/float/bool/None/list/dict, and no cycles (markers=None).
_C_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODE = None if _C_MAKE_ENCODER is None else _C_MAKE_ENCODER(
    None, _fallback, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)


def _encode(event: Mapping[str, Any]) -> str:
    if _C_ENCODE is not None:
        return "".join(_C_ENCODE(event, 0))
    return json.dumps(event, separators=(",", ":"))  # pragma: no cover -- CPython has the C encoder


__all__ = ["CLASS_NAMES", "OCSF_VERSION", "STEP_CLASSES", "Category", "EventClass", "FindingActivity",
           "OcsfMapper", "RemediationActivity", "RemediationStatus", "Severity", "guard_refusal", "severity_id"]
