"""Both distributions declare their licence as an SPDX expression (PEP 639) and a plain package dir, so
installing them (as `make venv` does) prints no setuptools warning."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_both_pyproject_files_use_an_spdx_license_string() -> None:
    for path in (ROOT / "pyproject.toml", ROOT / "client" / "pyproject.toml"):
        data = tomllib.loads(path.read_text())
        assert data["project"]["license"] == "GPL-3.0-or-later", path
        assert not any(c.startswith("License ::") for c in data["project"].get("classifiers", [])), path
        assert any(r.startswith("setuptools>=77") for r in data["build-system"]["requires"]), path


def test_an_editable_install_of_the_client_prints_no_setuptools_warning(tmp_path: Path) -> None:
    """What `make venv` does, into a throwaway environment: the build backend says nothing (no deprecated
    licence table, no meta-path finder for the flat layout)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True, timeout=120)
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(tmp_path / "venv" / "bin" / "python"), "install",
                        "--no-deps", "-e", str(ROOT / "client")], capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert "BuildBackendWarning" not in r.stderr and "deprecated" not in r.stderr, r.stderr
