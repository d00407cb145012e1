"""The capability set of systemd/sdd-executor.service is enough for the primitives, and is really what
limits them.

systemd cannot start units here (it is not PID 1), so the executor unit's `CapabilityBoundingSet=` and
`NoNewPrivileges=` are applied the same way by `setpriv` to a real daemon running the primitives in its own
process (root, system mode, `[actions] daemon_user = ""`: the executor's code in-process).
It then quarantines a file in another user's 0700 home, deletes another user's file from a sticky
directory, kills another user's process and restores the quarantined file to its owner — each of which
needs one of the capabilities the unit keeps. The control: without CAP_KILL, the kill is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support import daemon as daemon_support
from tests.support.daemon import DaemonProcess

from .units import EXECUTOR, unit_settings

SETPRIV = shutil.which("setpriv")
SDDCTL = Path(sys.executable).parent / "sddctl"
VICTIM_UID = 64990  # another user; needs no passwd entry
pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None,
                       reason="needs root and setpriv (util-linux) to run the daemon with the unit's capabilities"),
]

WORKFLOW = """workflow_id: captest
trigger: {type: captest}
steps:
  - step_id: quarantine
    action: quarantine_file
    params: {file_path: "{{ detection.file_path }}"}
    on_failure: continue
  - step_id: delete
    action: delete_file
    params: {file_path: "{{ detection.other_file }}"}
    on_failure: continue
  - step_id: kill
    action: kill_process
    params: {process_id: "{{ detection.process_id }}", trust_process_id: true, timeout: 5}
    on_failure: continue
    max_retries: 0
"""


def unit_capabilities() -> list[str]:
    return unit_settings(EXECUTOR)["CapabilityBoundingSet"][0].split()


def _setpriv_caps(caps: list[str]) -> str:
    return "-all," + ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)


@pytest.fixture
def scene() -> Iterator[dict[str, Any]]:
    """Another user's 0700 home with a file, their file in a sticky directory, and their process."""
    base = Path(tempfile.mkdtemp(prefix="sdd-caps-", dir="/tmp"))
    base.chmod(0o755)
    home = base / "home" / "victim"
    home.mkdir(parents=True)
    (base / "home").chmod(0o755)
    evil = home / "evil.exe"
    evil.write_bytes(b"not really evil\n" * 100)
    os.chown(evil, VICTIM_UID, VICTIM_UID)
    evil.chmod(0o600)
    os.utime(evil, (1_600_000_000, 1_600_000_000))
    os.chown(home, VICTIM_UID, VICTIM_UID)
    home.chmod(0o700)
    sticky = base / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    other = sticky / "other.bin"
    other.write_bytes(b"x")
    os.chown(other, VICTIM_UID, VICTIM_UID)
    proc = subprocess.Popen([SETPRIV, f"--reuid={VICTIM_UID}", f"--regid={VICTIM_UID}", "--clear-groups",
                             "sleep", "600"], stdin=subprocess.DEVNULL)
    try:
        yield {"base": base, "evil": evil, "other": other, "proc": proc}
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def _run_scene(tmp_path: Path, scene: dict[str, Any], caps: list[str],
               monkeypatch: pytest.MonkeyPatch) -> tuple[DaemonProcess, dict[str, Any]]:
    command = [SETPRIV, f"--bounding-set={_setpriv_caps(caps)}", "--inh-caps=-all", "--no-new-privs",
               *daemon_support.sdd_command()]
    monkeypatch.setattr(daemon_support, "sdd_command", lambda: command)
    d = DaemonProcess(tmp_path, workflows={"captest": WORKFLOW}, user_mode=False, config_overrides={
        "api": {"socket_group": "root"},
        "actions": {"allowed_roots": [str(scene["base"] / "home"), str(scene["base"] / "tmp")],
                    "protected_processes": []},
    })
    try:
        d.start()
        proc = psutil.Process(scene["proc"].pid)
        d.drop({"type": "captest", "file_path": str(scene["evil"]), "other_file": str(scene["other"]),
                "process_id": proc.pid, "process_start_time": proc.create_time()})
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status NOT IN ('pending', 'running')") == 1)
        [run_id] = [r[0] for r in d.query("SELECT run_id FROM runs")]
        shown = subprocess.run([str(SDDCTL), "--socket", str(d.socket), "show", run_id, "--json"],
                               capture_output=True, text=True, timeout=60, check=False)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        steps = {s["step_id"]: s for s in json.loads(shown.stdout)["steps"]}
    except BaseException:
        d.close()  # the callers only close a daemon they got back
        raise
    return d, steps


def test_the_units_capabilities_are_enough_for_every_action(
        tmp_path: Path, scene: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    d, steps = _run_scene(tmp_path, scene, unit_capabilities(), monkeypatch)
    try:
        assert {k: s["status"] for k, s in steps.items()} == {
            "quarantine": "completed", "delete": "completed", "kill": "completed"}, (steps, d.log())
        assert not scene["evil"].exists() and not scene["other"].exists()
        assert scene["proc"].wait(timeout=30) != 0
        qid = steps["quarantine"]["result"]["quarantine_id"]
        restored = subprocess.run([str(SDDCTL), "--socket", str(d.socket), "quarantine", "restore", qid],
                                  capture_output=True, text=True, timeout=60, check=False)
        assert restored.returncode == 0, restored.stdout + restored.stderr + d.log()
        st = scene["evil"].stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (VICTIM_UID, VICTIM_UID, 0o600)
        assert st.st_mtime == 1_600_000_000
        assert scene["evil"].read_bytes() == b"not really evil\n" * 100
    finally:
        d.close()


def test_without_cap_kill_the_kill_is_refused(
        tmp_path: Path, scene: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    caps = [c for c in unit_capabilities() if c != "CAP_KILL"]
    d, steps = _run_scene(tmp_path, scene, caps, monkeypatch)
    try:
        assert steps["quarantine"]["status"] == "completed", (steps, d.log())
        assert steps["kill"]["status"] == "failed", (steps, d.log())
        assert scene["proc"].poll() is None  # still running: the bounding set, not luck, protected it
    finally:
        d.close()
