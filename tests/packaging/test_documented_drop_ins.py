"""The unit drop-ins the docs tell administrators to write are valid for systemd, as written."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .units import EXECUTOR, EXECUTOR_SOCKET, REPO, SERVICE, SOCKET

ANALYZE = shutil.which("systemd-analyze")
VENV_SDD = REPO / ".venv" / "bin" / "sdd"
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _printf_drop_in(doc: str, name: str) -> tuple[str, str]:
    """(directory, content) of `printf '...' > /etc/systemd/system/DIR/NAME` in a doc."""
    text = (REPO / "docs" / doc).read_text(encoding="utf-8")
    match = re.search(rf"printf '([^']*)' > /etc/systemd/system/([a-z.-]+\.d)/{re.escape(name)}", text)
    assert match, f"{doc}: no printf drop-in {name}"
    return match.group(2), match.group(1).replace("\\n", "\n")


def _units_with(tmp_path: Path, drop_ins: dict[str, dict[str, str]]) -> Path:
    for unit in (SERVICE, SOCKET, EXECUTOR, EXECUTOR_SOCKET):
        # verify checks that ExecStart= programs exist: point them at the venv (see test_units.py).
        text = unit.read_text(encoding="utf-8").replace("/usr/bin/sdd ", f"{VENV_SDD} ")
        (tmp_path / unit.name).write_text(text, encoding="utf-8")
    for directory, files in drop_ins.items():
        (tmp_path / directory).mkdir(exist_ok=True)
        for name, content in files.items():
            (tmp_path / directory / name).write_text(content, encoding="utf-8")
    return tmp_path


def test_documented_drop_ins_verify_without_warnings(tmp_path: Path) -> None:
    roots_dir, roots = _printf_drop_in("operations.md", "allowed-roots.conf")
    socket_dir, socket_mode = _printf_drop_in("security.md", "read-groups.conf")
    # The allowed roots are where the executor acts: its unit is the one to widen.
    assert (roots_dir, socket_dir) == ("sdd-executor.service.d", "sdd.socket.d")
    units = _units_with(tmp_path, {
        "sdd-executor.service.d": {"allowed-roots.conf": roots},
        "sdd.socket.d": {"read-groups.conf": socket_mode},
    })
    result = subprocess.run([ANALYZE, "verify", "--man=no", *(str(units / u.name) for u in
                                                              (SERVICE, SOCKET, EXECUTOR, EXECUTOR_SOCKET))],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr
