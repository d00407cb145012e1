"""As a non-root user (sdd --user), what the kernel forbids is a clear Forbidden and changes nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="needs root and setpriv to run the actions as another user")

SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from sdd.actions import ActionServices, builtin_actions
from sdd.config import ActionsConfig
root, state, target, pid, started = sys.argv[1:6]
services = ActionServices(ActionsConfig(allowed_roots=(Path(root),), user_mode=True), Path(state))
actions = {s.name: s.handler for s in builtin_actions(services)}
async def main():
    out = {}
    for name, params in (("quarantine_file", {"file_path": target}), ("delete_file", {"file_path": target}),
                         ("kill_process", {"process_id": int(pid), "trust_process_id": True,
                                           "process_start_time": float(started)})):
        try:
            out[name] = {"ok": await actions[name](**params, context={})}
        except Exception as exc:
            out[name] = {"error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(out))
asyncio.run(main())
"""


@pytest.fixture
def area() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="sdd-user-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def test_unprivileged_user_gets_forbidden_and_nothing_changes(area: Path) -> None:
    root = area / "root"
    (root / "sys").mkdir(parents=True)
    os.chmod(root, 0o755)
    target = root / "sys" / "rootfile"
    target.write_bytes(b"root's")
    os.chmod(target, 0o600)
    state = area / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", SCRIPT,
             str(root), str(state), str(target), str(victim.pid),
             repr(psutil.Process(victim.pid).create_time())],
            check=False, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        assert out["quarantine_file"] == {"error": "Forbidden", "message": f"quarantine_file: permission denied "
                                                                          f"reading {target}"}
        assert out["delete_file"]["error"] == "Forbidden"
        assert out["kill_process"] == {"error": "Forbidden",
                                       "message": f"kill_process: not permitted to signal pid {victim.pid}"}
        assert target.read_bytes() == b"root's" and victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
