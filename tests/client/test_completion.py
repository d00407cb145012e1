"""Bash completion for sddctl: commands, options, and ids completed from a live daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.api.live import SDDCTL

COMPLETION = Path(__file__).resolve().parents[2] / "client" / "completion" / "sddctl"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def complete(line: str, socket: Path | None = None) -> list[str]:
    """What <TAB> offers at the end of `line` (a trailing space means a new, empty word)."""
    words = line.split()
    if line.endswith(" "):
        words.append("")
    script = (f"source {COMPLETION}\n"
              f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
              f"COMP_CWORD={len(words) - 1}\n"
              "_sddctl\n"
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    env = {"PATH": f"{Path(SDDCTL).parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")}
    if socket is not None:
        env["SDD_SOCKET"] = str(socket)
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                       env=env, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return [w for w in r.stdout.splitlines() if w]


def test_commands_and_options():
    assert "show-workflow" in complete("sddctl sh")
    assert set(complete("sddctl ")) >= {"status", "workflows", "run", "history", "quarantine", "watch", "--json"}
    assert complete("sddctl quarantine ") == ["list", "restore"]
    assert "--dry-run" in complete("sddctl run x --d")
    assert complete("sddctl history --status rol") == ["rolled_back"]


def test_workflow_and_run_ids_come_from_the_daemon(live):
    assert "notify3" in complete("sddctl run no", live.socket)
    run_id = subprocess.run([SDDCTL, "--socket", str(live.socket), "--json", "run", "notify3"], capture_output=True,
                            text=True, timeout=60, check=True).stdout.split('"run_id": "')[1].split('"')[0]
    assert run_id in complete(f"sddctl show {run_id[:6]}", live.socket)


def test_no_daemon_means_no_ids_and_no_noise(tmp_path):
    assert complete("sddctl run ", tmp_path / "none.sock") == []
