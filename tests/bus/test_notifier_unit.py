"""systemd/sdd-notifier.service: a user unit that systemd accepts without a warning."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "sdd-notifier.service"
VENV_NOTIFIER = REPO / ".venv" / "bin" / "sdd-notifier"
ANALYZE = shutil.which("systemd-analyze")


def test_unit_runs_the_notifier_and_restarts_only_on_failure() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    assert unit["Service"]["ExecStart"] == "/usr/bin/sdd-notifier"
    assert unit["Service"]["Restart"] == "on-failure"
    assert unit["Install"]["WantedBy"] == "graphical-session.target"
    assert "User" not in unit["Service"]  # a user unit runs as its user


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (see tests/system-deps.sh)")
def test_systemd_analyze_user_verify_is_silent(tmp_path: Path) -> None:
    if not VENV_NOTIFIER.exists():
        pytest.skip(f"{VENV_NOTIFIER} is missing: install the client with `pip install -e client[notifier]`")
    # verify checks that ExecStart= exists: before the package is installed it only exists in the venv.
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/usr/bin/sdd-notifier", str(VENV_NOTIFIER)))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    # `--user` needs a runtime directory even offline; systemd is not PID 1 here.
    result = subprocess.run(
        [str(ANALYZE), "--user", "verify", "--man=no", str(copy)],
        capture_output=True, text=True, timeout=60, env={"XDG_RUNTIME_DIR": str(runtime), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
