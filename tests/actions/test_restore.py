"""restore_file into the directory the file left: refused when that directory was re-created or changed owner
(unless forced), and on_conflict fail | rename | overwrite — in the action, the API and sddctl alike."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sdd.engine import Conflict, Forbidden
from tests.support.daemon import DaemonProcess

from .conftest import Env
from .procs import needs_other_user

CONTENT = b"quarantined bytes\n" * 50
REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


async def quarantined(env: Env, rel: str = "d/file.bin") -> tuple[Path, str]:
    path = env.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(CONTENT)
    return path, (await env.call("quarantine_file", file_path=str(path)))["quarantine_id"]


async def test_restore_into_a_re_created_directory_is_refused_unless_forced(env: Env) -> None:
    path, qid = await quarantined(env)
    path.parent.rmdir()
    path.parent.mkdir()  # same name, same owner, another directory
    with pytest.raises(Forbidden, match="deleted and re-created since"):
        await env.call("restore_file", quarantine_id=qid)
    assert not path.exists() and (env.vault / f"{qid}.bin").exists()
    res = await env.call("restore_file", quarantine_id=qid, force=True)
    assert path.read_bytes() == CONTENT
    assert res["forced_directory"] == ["it was deleted and re-created since (another inode)"]


@needs_other_user
async def test_restore_into_a_directory_with_another_owner_is_refused_unless_forced(env: Env) -> None:
    path, qid = await quarantined(env)
    os.chown(path.parent, NOBODY, NOBODY)  # e.g. someone else's directory now has this name
    with pytest.raises(Forbidden, match=f"its owner is uid {NOBODY}, was uid 0"):
        await env.call("restore_file", quarantine_id=qid)
    assert os.listdir(path.parent) == []
    await env.call("restore_file", quarantine_id=qid, force=True)
    assert path.read_bytes() == CONTENT


async def test_restore_into_the_same_directory_needs_no_force(env: Env) -> None:
    path, qid = await quarantined(env)
    os.chmod(path.parent, 0o700)  # a mode change is not another directory
    res = await env.call("restore_file", quarantine_id=qid)
    assert path.read_bytes() == CONTENT and "forced_directory" not in res


async def test_on_conflict_fail_rename_and_overwrite(env: Env) -> None:
    path, qid = await quarantined(env)
    path.write_bytes(b"newer")
    with pytest.raises(Conflict, match="already exists; not overwritten"):
        await env.call("restore_file", quarantine_id=qid)
    beside = await env.call("restore_file", quarantine_id=qid, on_conflict="rename")
    assert Path(beside["restored_path"]).read_bytes() == CONTENT and path.read_bytes() == b"newer"
    os.unlink(beside["restored_path"])
    path2, qid2 = await quarantined(env, "d/other.bin")
    path2.write_bytes(b"to be replaced")
    res = await env.call("restore_file", quarantine_id=qid2, on_conflict="overwrite")
    assert path2.read_bytes() == CONTENT and res["restored_path"] == str(path2)
    assert res["replaced"] == {"sha256": hashlib.sha256(b"to be replaced").hexdigest(), "size": 14, "uid": 0}
    assert [n for n in os.listdir(path2.parent) if n.startswith(".sdd-restore")] == []


async def test_overwrite_never_replaces_a_directory(env: Env) -> None:
    path, qid = await quarantined(env)
    path.mkdir()
    with pytest.raises(Conflict, match="is a directory; only a regular file is overwritten"):
        await env.call("restore_file", quarantine_id=qid, on_conflict="overwrite")
    assert path.is_dir()


# -- through the daemon and sddctl ---------------------------------------------------------------------------

QUARANTINE = """workflow_id: q
trigger: {type: q}
steps:
  - step_id: quarantine
    action: quarantine_file
    params: {file_path: "{{ detection.file_path }}"}
"""


def sddctl(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "sddctl"), "--socket", str(d.socket), *args, "--json"],
                          capture_output=True, text=True, timeout=60, check=False)


def quarantine_via_daemon(d: DaemonProcess, path: Path, n: int) -> str:
    d.drop({"type": "q", "file_path": str(path)})
    d.wait_for(lambda: d.count("SELECT count(*) FROM quarantine") == n, what="the quarantine")
    return str(d.query("SELECT id FROM quarantine ORDER BY quarantined_at DESC")[0][0])


@needs_other_user
def test_daemon_restore_refuses_a_changed_directory_unless_root_forces_it(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, workflows={"q": QUARANTINE}) as d:
        target = d.root / "files" / "doc.txt"
        target.parent.mkdir()
        target.write_bytes(CONTENT)
        qid = quarantine_via_daemon(d, target, 1)
        assert not target.exists()
        target.parent.rmdir()
        target.parent.mkdir()
        os.chown(target.parent, NOBODY, NOBODY)
        refused = sddctl(d, "quarantine", "restore", qid)
        assert refused.returncode == 1 and "not the directory" in refused.stdout + refused.stderr
        assert os.listdir(target.parent) == []
        done = sddctl(d, "quarantine", "restore", qid, "--force")
        assert done.returncode == 0, done.stdout + done.stderr
        assert target.read_bytes() == CONTENT
        audit: Any = [json.loads(r[0]) for r in d.query(
            "SELECT details FROM audit WHERE action = 'quarantine.restore' AND outcome = 'restored'")]
        assert audit and audit[-1]["force"] is True


@needs_other_user
def test_daemon_force_is_root_s_alone(tmp_path: Path) -> None:
    # nobody, made a member of the socket group: may restore, may not force.
    with DaemonProcess(tmp_path, workflows={"q": QUARANTINE}, config_overrides={"api": {"socket_group": "nogroup"}}) as d:
        os.chmod(d.runtime, 0o755)
        target = d.root / "kept.txt"
        target.write_bytes(CONTENT)
        qid = quarantine_via_daemon(d, target, 1)
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-m",
                     "sdd_client.sddctl", "--socket", str(d.socket), "quarantine", "restore", qid, "--json"]
        env = {**os.environ, "PYTHONPATH": str(REPO / "client")}
        forced = subprocess.run([*as_nobody, "--force"], capture_output=True, text=True, timeout=60, env=env,
                                check=False)
        assert forced.returncode == 1 and "only root may force" in forced.stdout + forced.stderr
        assert not target.exists()
        plain = subprocess.run(as_nobody, capture_output=True, text=True, timeout=60, env=env, check=False)
        assert plain.returncode == 0, plain.stdout + plain.stderr
        assert target.read_bytes() == CONTENT


def test_daemon_restore_overwrite_and_rename_work(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, workflows={"q": QUARANTINE}) as d:
        first, second = d.root / "a.txt", d.root / "b.txt"
        first.write_bytes(CONTENT)
        q1 = quarantine_via_daemon(d, first, 1)
        second.write_bytes(CONTENT + b"2")
        q2 = quarantine_via_daemon(d, second, 2)
        first.write_bytes(b"newer a")
        second.write_bytes(b"newer b")
        refused = sddctl(d, "quarantine", "restore", q1)
        assert refused.returncode == 1 and first.read_bytes() == b"newer a"
        over = sddctl(d, "quarantine", "restore", q1, "--on-conflict", "overwrite")
        assert over.returncode == 0, over.stdout + over.stderr
        assert first.read_bytes() == CONTENT and json.loads(over.stdout)["replaced"]["size"] == 7
        beside = sddctl(d, "quarantine", "restore", q2, "--on-conflict", "rename")
        assert beside.returncode == 0, beside.stdout + beside.stderr
        placed = Path(json.loads(beside.stdout)["restored_path"])
        assert placed != second and placed.read_bytes() == CONTENT + b"2" and second.read_bytes() == b"newer b"
