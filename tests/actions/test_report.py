"""generate_report: JSON and self-contained HTML from the run the step belongs to."""

from __future__ import annotations

import json
from pathlib import Path

from sdd.engine import RunStatus, Workflow

from .conftest import Env


async def test_report_describes_the_run_with_timeline_and_quarantine(env: Env) -> None:
    victim = env.root / "x.exe"
    victim.write_bytes(b"bad")
    wf = Workflow.from_dict({"workflow_id": "incident", "steps": [
        {"step_id": "quarantine", "action": "quarantine_file", "params": {"file_path": "{{ detection.file_path }}"}},
        {"step_id": "skipme", "action": "send_notification", "params": {"message": "x"}, "condition": "False"},
        {"step_id": "report", "action": "generate_report", "params": {"report_type": "incident"}}]})
    detection = {"id": "d-1", "file_path": str(victim), "threat_name": "<script>alert(1)</script>"}
    result = await env.engine().execute_workflow(wf, detection=detection)
    assert result.status is RunStatus.COMPLETED, result.error
    out = result.step_results["report"].result
    qid = result.step_results["quarantine"].result["quarantine_id"]
    assert out["quarantine_ids"] == [qid]
    data = json.loads(Path(out["json_path"]).read_text())
    assert data["run"]["run_id"] == result.run_id and data["detection"]["id"] == "d-1"
    steps = {s["step_id"]: s for s in data["steps"]}
    assert steps["quarantine"]["status"] == "completed" and steps["quarantine"]["duration"] >= 0
    assert steps["skipme"]["status"] == "skipped"
    assert data["quarantine"][0]["sha256"] == result.step_results["quarantine"].result["sha256"]
    page = Path(out["html_path"]).read_text()
    assert "<svg" in page and "<rect" in page
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert Path(out["json_path"]).parent == env.state / "reports"


async def test_report_rerun_rewrites_the_same_files(env: Env) -> None:
    r1 = await env.call("generate_report", report_type="maintenance", format="json")
    assert "html_path" not in r1 and Path(r1["json_path"]).exists()
    wf = Workflow.from_dict({"workflow_id": "w", "steps": [
        {"step_id": "r", "action": "generate_report", "params": {"format": "html"}}]})
    res = await env.engine().execute_workflow(wf, run_id="fixed")
    again = await env.engine().execute_workflow(wf, run_id="fixed")
    assert res.step_results["r"].result["html_path"] == again.step_results["r"].result["html_path"]


async def test_report_type_is_checked(env: Env) -> None:
    import pytest

    from sdd.engine import InvalidParams
    with pytest.raises(InvalidParams, match="report_type"):
        await env.call("generate_report", report_type="../../etc/cron.d/x")
    with pytest.raises(InvalidParams, match="format"):
        await env.call("generate_report", format="pdf")


async def test_report_from_the_store_when_no_run_log_is_registered(env: Env, tmp_path: Path) -> None:
    from sdd.engine import WorkflowEngine
    from sdd.history.recorder import HistoryRecorder
    from sdd.store import Store
    store = Store.open(tmp_path / "sdd.db")
    try:
        env.configure(store=store)
        victim = env.root / "x.exe"
        victim.write_bytes(b"bad")
        engine = WorkflowEngine(actions=env.actions.values(), listeners=[HistoryRecorder(store)])
        wf = Workflow.from_dict({"workflow_id": "w", "steps": [
            {"step_id": "quarantine", "action": "quarantine_file", "params": {"file_path": str(victim)}},
            {"step_id": "report", "action": "generate_report", "params": {"format": "json"}}]})
        result = await engine.execute_workflow(wf)
        assert result.status is RunStatus.COMPLETED, result.error
        data = json.loads(Path(result.step_results["report"].result["json_path"]).read_text())
        steps = {s["step_id"]: s for s in data["steps"]}
        assert steps["quarantine"]["status"] == "completed"
        assert data["quarantine"][0]["quarantine_id"] == result.step_results["quarantine"].result["quarantine_id"]
    finally:
        store.close()
