"""`sdd check-config`: exit 0 on a good setup, else 1 with every problem listed, each naming its file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, sdd_command
from tests.support.workflows import notify_workflow


def check(d: DaemonProcess, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDD_")}
    return subprocess.run(sdd_command() + ["check-config", "--config", str(d.config_file), *extra],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def test_a_good_setup_passes(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, workflows={"notify5": notify_workflow()})
    out = check(d, "--user")
    assert out.returncode == 0, out.stderr
    assert "notify5" in out.stdout


def test_every_config_error_is_listed_with_key_and_file(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path)
    d.config_file.write_text(d.config_file.read_text() + "\n[intake]\nmax_queued = \"lots\"\nbogus = 1\n")
    out = check(d, "--user")
    assert out.returncode == 1
    assert f"{d.config_file}: intake.max_queued" in out.stderr
    assert f"{d.config_file}: intake.bogus: unknown key" in out.stderr


def test_every_broken_workflow_is_listed(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, workflows={
        "good": notify_workflow("good"),
        "bad_yaml": "workflow_id: [unclosed\n",
        "bad_action": "workflow_id: bad_action\nsteps:\n  - step_id: x\n    action: no_such_action\n",
    })
    out = check(d, "--user")
    assert out.returncode == 1
    assert "bad_yaml.yaml" in out.stderr
    assert "bad_action.yaml" in out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="system mode's ownership rule is about root; needs root")
def test_system_mode_refuses_a_workflow_others_can_write(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, workflows={"notify5": notify_workflow()}, user_mode=False)
    os.chmod(tmp_path, 0o755)
    os.chmod(d.workflows_dir, 0o755)
    assert check(d).returncode == 0, check(d).stderr
    os.chmod(d.workflows_dir / "notify5.yaml", 0o666)
    out = check(d)
    assert out.returncode == 1
    assert "notify5.yaml" in out.stderr and "writable" in out.stderr


def test_the_daemon_refuses_to_start_on_a_bad_config(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, config_overrides={"engine": {"max_concurrent_runs": 0}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDD_")}
    out = subprocess.run(sdd_command() + ["--user", "--config", str(d.config_file)], capture_output=True,
                         text=True, timeout=60, env=env, check=False)
    assert out.returncode == 1
    assert "engine.max_concurrent_runs" in out.stderr
