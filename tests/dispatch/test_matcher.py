"""Which workflows a detection starts: type, `when`, priority, ties, exclusions and the dedup window."""

from __future__ import annotations

from typing import Any

from sdd.dispatch.matcher import Decision, DedupWindow, candidates, match
from sdd.engine import Workflow


def wf(workflow_id: str, trigger: dict[str, Any] | None) -> Workflow:
    data: dict[str, Any] = {"workflow_id": workflow_id, "steps": [
        {"step_id": "n", "action": "send_notification", "params": {"message": "x", "channel": "log"}}]}
    if trigger is not None:
        data["trigger"] = trigger
    return Workflow.from_dict(data)


def ids(workflows: list[Workflow]) -> list[str]:
    return [w.workflow_id for w in workflows]


SET = {w.workflow_id: w for w in [
    wf("low", {"type": "malware", "priority": 1}),
    wf("critical", {"type": ["malware", "ransomware"], "when": 'detection.severity == "critical"',
                    "priority": 10}),
    wf("critical_too", {"type": "malware", "when": 'detection.get("severity") in ["critical"]', "priority": 10}),
    wf("pua", {"type": "pua"}),
    wf("manual", None),
    wf("broken_when", {"type": "pua", "when": "detection.missing.attr > 1", "priority": 99}),
]}


def test_highest_priority_wins_and_ties_all_run() -> None:
    assert ids(candidates(SET, {"type": "malware", "severity": "critical"})) == ["critical", "critical_too"]
    assert ids(candidates(SET, {"type": "malware", "severity": "low"})) == ["low"]


def test_type_list_and_no_trigger() -> None:
    assert ids(candidates(SET, {"type": "ransomware", "severity": "critical"})) == ["critical"]
    assert candidates(SET, {"type": "unknown"}) == []


def test_a_failing_when_is_a_non_match_not_a_crash() -> None:
    assert ids(candidates(SET, {"type": "pua"})) == ["pua"]


def test_excluded_and_no_match_start_nothing() -> None:
    assert match(SET, {"type": "malware"}, "1", excluded=True).decision is Decision.EXCLUDED
    assert match(SET, {"type": "nothing"}, "1").decision is Decision.NO_MATCH


def test_same_file_and_threat_inside_the_window_is_a_duplicate() -> None:
    window = DedupWindow(60.0)
    det = {"type": "malware", "file_path": "/tmp/a", "threat_name": "T"}
    first = match(SET, det, "1", dedup=window, now=1000.0)
    assert first.decision is Decision.MATCHED
    again = match(SET, det, "2", dedup=window, now=1030.0)
    assert again.decision is Decision.DUPLICATE and again.duplicate_of == "1"
    other_threat = match(SET, {**det, "threat_name": "U"}, "3", dedup=window, now=1030.0)
    assert other_threat.decision is Decision.MATCHED
    later = match(SET, det, "4", dedup=window, now=1100.0)
    assert later.decision is Decision.MATCHED


def test_exclusions_cover_hashes_and_directories_above_the_file() -> None:
    from sdd.dispatch.matcher import Exclusions

    ex = Exclusions.from_rows([{"kind": "sha256", "value": "AB" * 32}, {"kind": "path", "value": "/srv/ok"}])
    assert ex.excludes({"sha256": "ab" * 32})
    assert ex.excludes({"file_path": "/srv/ok/deep/file.exe"})
    assert ex.excludes({"file_path": "/srv/ok"})
    assert ex.excludes({"file_path": "/srv/x/../ok/f"})
    assert not ex.excludes({"file_path": "/srv/okay/f"})
    assert not ex.excludes({"file_path": "relative/srv/ok"})
    assert not Exclusions().excludes({"file_path": "/srv/ok"})
