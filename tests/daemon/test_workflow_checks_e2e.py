"""Workflow checks through the front door: `sdd check-config` and the running daemon (`sddctl validate`,
`sddctl run --dry-run`) report a self-containing YAML alias, a misspelt or missing action parameter and an
empty file as plain issues naming file and line — never a traceback or an internal name — and a dry run
that cannot render its params leaves no failed run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.api.live import sddctl
from tests.support.daemon import DaemonProcess, sdd_command

RECURSIVE = "workflow_id: loops\nsteps: &s\n  - {step_id: a, type: parallel, steps: *s}\n"
TYPO = ("workflow_id: typo\nsteps:\n  - step_id: n\n    type: notification\n"
        "    params: {mesage: hi, urgency: urgent}\n")
GOOD = "workflow_id: good\nsteps:\n  - {step_id: n, type: notification, params: {message: hi, channel: log}}\n"
NEEDS_FILE = ("workflow_id: needs_file\nsteps:\n"
              "  - {step_id: q, action: quarantine_file, params: {file_path: '{{ detection.file_path }}'}}\n"
              "  - {step_id: n, type: notification, params: {message: done, channel: log}}\n")


def check_config(d: DaemonProcess) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDD_")}
    return subprocess.run(sdd_command() + ["check-config", "--user", "--config", str(d.config_file)],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def test_check_config_names_a_recursive_alias_and_a_parameter_typo(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, workflows={"loops": RECURSIVE, "typo": TYPO, "good": GOOD})
    out = check_config(d)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    loops, typo = d.workflows_dir / "loops.yaml", d.workflows_dir / "typo.yaml"
    assert (f"{loops}:3:41: the alias *s is used inside the value it names (anchored &s on line 2): a value "
            "may not contain itself") in out.stderr
    assert (f"{typo}:5:14: send_notification has no parameter 'mesage' (did you mean 'message'?)") in out.stderr
    assert f"{typo}:5:13: send_notification needs the parameter 'message'" in out.stderr
    assert "urgency of send_notification" not in out.stderr and "must be one of low, normal, critical" in out.stderr
    assert "1 workflow(s) valid" in out.stderr


def test_the_running_daemon_validates_loads_and_plans_alike(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, workflows={"good": GOOD, "needs_file": NEEDS_FILE, "loops": RECURSIVE})
    d.start()
    try:
        empty, recursive, typo = tmp_path / "empty.yaml", tmp_path / "rec.yaml", tmp_path / "typo.yaml"
        empty.write_text("")
        recursive.write_text(RECURSIVE)
        typo.write_text(TYPO)
        r = sddctl(d, "validate", str(empty), str(recursive), str(typo))
        assert r.returncode == 1, r.stderr
        assert f"{empty}:1:1: empty workflow file" in r.stdout
        assert "the alias *s is used inside the value it names" in r.stdout
        assert "did you mean 'message'?" in r.stdout
        assert "'text'" not in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr
        r = sddctl(d, "reload")
        assert "internal" not in r.stdout + r.stderr

        r = sddctl(d, "--json", "run", "needs_file", "--dry-run", "--wait")
        assert r.returncode == 0, r.stdout + r.stderr
        doc = json.loads(r.stdout)
        assert doc["status"] == "planned" and doc["dry_run"] and doc["run_id"] is None
        plan = {s["step_id"]: s for s in doc["plan"]}
        assert plan["q"]["would_run"] is False and plan["q"]["reason"].startswith("would fail: params: no key")
        assert plan["n"]["reason"] == "not reached: step 'q' would fail"
        stats = json.loads(sddctl(d, "--json", "stats").stdout)
        rows = stats if isinstance(stats, list) else stats.get("workflows", stats.get("stats", []))
        assert all(row.get("failed", 0) == 0 for row in rows)
        assert "quarantine" not in json.dumps(json.loads(sddctl(d, "--json", "quarantine", "list").stdout))
    finally:
        d.stop()


def test_check_config_in_system_mode_refuses_scripts_and_workflow_dirs_reached_through_tmp(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("system mode's ownership rule is about root; needs root")
    d = DaemonProcess(tmp_path, workflows={"good": GOOD}, user_mode=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDD_")}

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(sdd_command() + ["check-config", "--config", str(d.config_file)],
                              capture_output=True, text=True, timeout=60, env=env, check=False)
    assert check().returncode == 0, check().stderr
    tmp_path.chmod(0o1777)
    (tmp_path / "scripts").symlink_to(d.scripts_dir)
    (tmp_path / "workflows").symlink_to(d.workflows_dir)
    text = d.config_file.read_text()
    d.config_file.write_text(text.replace(str(d.scripts_dir), str(tmp_path / "scripts"))
                             .replace(str(d.workflows_dir), str(tmp_path / "workflows")))
    out = check()
    assert out.returncode == 1
    assert "actions.scripts_dir refused: /tmp is writable by everyone (mode 1777)" in out.stderr
    assert f"{tmp_path / 'workflows'}: directory refused: /tmp is writable by everyone (mode 1777)" in out.stderr
