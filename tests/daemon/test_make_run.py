"""`make run` a second time, while its daemon runs: one line saying so, exit 0 (as `systemctl start` of a
running unit), nothing touched."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess

CHECKOUT = Path(__file__).resolve().parent.parent.parent
VENV = Path(sys.executable).parent.parent


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_a_second_make_run_says_in_one_line_that_sdd_already_runs(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path) as d:
        before = sorted(p.name for p in d.runtime.iterdir())
        # -o: never (re)install the venv from here; RUNDIR: where this daemon's socket is.
        r = subprocess.run(["make", "-s", "--no-print-directory", "-o", f"{VENV}/.installed", "run",
                            f"VENV={VENV}", f"RUNDIR={d.runtime}"], cwd=CHECKOUT, capture_output=True, text=True,
                           timeout=120, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        expected = f"sdd is already running on {d.runtime}/sdd.sock (stop it with Ctrl-C in its terminal)"
        assert r.stdout.splitlines() == [expected] and r.stderr == ""
        assert sorted(p.name for p in d.runtime.iterdir()) == before
        with d.client() as c:
            assert c.call("ping") == {"pong": True}
