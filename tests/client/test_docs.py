"""The manual pages and the API reference stay in step with the code."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from sdd_client.sddctl import build_parser

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "docs" / "man"


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_every_sddctl_command_is_in_the_man_page_and_the_completion():
    page = (MAN / "sddctl.1").read_text()
    completion = (ROOT / "client" / "completion" / "sddctl").read_text()
    for command in _subcommands():
        roff = command.replace("-", "\\-")
        assert f".B {roff}" in page or f".BI {roff}" in page or f".B {roff} " in page, command
        assert command in completion, command


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
@pytest.mark.parametrize("page", sorted(p.name for p in MAN.iterdir()))
def test_man_pages_render_without_warnings(page):
    r = subprocess.run(["man", "--warnings", "-l", str(MAN / page)], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "MANPAGER": "cat", "MANWIDTH": "80"}, timeout=60, check=False)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert len(r.stdout) > 500

