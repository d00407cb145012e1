"""The spool modes from systemd/sdd.tmpfiles, tried by real unprivileged processes.

A spool is built with exactly the modes of the tmpfiles.d entry (in a temp directory, with a throwaway
group id standing in for `sdd-submit`), then processes running as `nobody` do what a submitter does and
what a tamperer would try. Needs root (to create the spool and switch users with setpriv).
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

import pytest

from .units import tmpfiles_entries

SETPRIV = shutil.which("setpriv")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None,
    reason="needs root and setpriv (util-linux) to build the spool and act as unprivileged users")

SUBMIT_GID = 64999   # stands in for group sdd-submit; need not exist in /etc/group
SUBMITTER = 65534    # nobody, a member of SUBMIT_GID
OTHER_SUBMITTER = 64998
OUTSIDER = 64997     # in no group of the spool
# A python every user can run (the venv's may live under /root).
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

# Runs as the unprivileged user: tries each operation and reports "ok" or the errno name.
PROBE = r"""
import errno, json, os, sys
spool = sys.argv[1]
ops = json.loads(sys.argv[2])
out = {}
for name, op, *args in ops:
    paths = [os.path.join(spool, a) for a in args]
    try:
        if op == "create":
            os.close(os.open(paths[0], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        elif op == "rename":
            os.rename(paths[0], paths[1])
        elif op == "list":
            os.listdir(paths[0])
        elif op == "read":
            open(paths[0], "rb").close()
        elif op == "unlink":
            os.unlink(paths[0])
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode[exc.errno]
print(json.dumps(out))
"""


@pytest.fixture
def spool() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are 0700, and nobody must be able to reach the spool.
    base = Path(tempfile.mkdtemp(prefix="sdd-spool-perm-"))
    try:
        base.chmod(0o755)
        root = base / "spool"
        for entry in tmpfiles_entries():
            if not entry.path.startswith("/var/spool/sdd"):
                continue
            path = root / os.path.relpath(entry.path, "/var/spool/sdd")
            path.mkdir()
            os.chown(path, 0, 0 if entry.group == "root" else SUBMIT_GID)
            path.chmod(entry.mode)  # after chown: chown would clear set-id bits
        (root / "cur" / "claimed").write_text("{}")
        yield root
    finally:
        shutil.rmtree(base)


def _probe(spool: Path, uid: int, groups: list[int], ops: list[list[str]]) -> dict[str, str]:
    argv = [SETPRIV, f"--reuid={uid}", f"--regid={uid}",
            f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
            PYTHON, "-I", "-c", PROBE, str(spool), json.dumps(ops)]
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_submitter_can_deliver_maildir_style(spool: Path) -> None:
    got = _probe(spool, SUBMITTER, [SUBMIT_GID], [
        ["create", "create", "tmp/a.json"],
        ["deliver", "rename", "tmp/a.json", "new/a.json"],
    ])
    assert got == {"create": "ok", "deliver": "ok"}
    assert (spool / "new" / "a.json").exists()


def test_a_submitter_can_neither_list_nor_touch_other_detections(spool: Path) -> None:
    other = _probe(spool, OTHER_SUBMITTER, [SUBMIT_GID], [
        ["create", "create", "tmp/theirs.json"], ["deliver", "rename", "tmp/theirs.json", "new/theirs.json"]])
    assert other == {"create": "ok", "deliver": "ok"}
    got = _probe(spool, SUBMITTER, [SUBMIT_GID], [
        ["list_root", "list", "."],
        ["list_tmp", "list", "tmp"],
        ["list_new", "list", "new"],
        ["list_cur", "list", "cur"],
        ["read_cur", "read", "cur/claimed"],
        ["create_cur", "create", "cur/forged.json"],
        ["create_rejected", "create", "rejected/forged.json"],
        ["delete_other", "unlink", "new/theirs.json"],
        ["mine", "create", "tmp/mine.json"],
        ["replace_other", "rename", "tmp/mine.json", "new/theirs.json"],
    ])
    assert got == {
        "list_root": "EACCES", "list_tmp": "EACCES", "list_new": "EACCES", "list_cur": "EACCES",
        "read_cur": "EACCES", "create_cur": "EACCES", "create_rejected": "EACCES",
        # The sticky bit: another submitter's file can be neither removed nor replaced.
        "delete_other": "EPERM", "mine": "ok", "replace_other": "EPERM",
    }
    assert (spool / "new" / "theirs.json").exists()


def test_an_outsider_cannot_submit_at_all(spool: Path) -> None:
    got = _probe(spool, OUTSIDER, [], [["create", "create", "tmp/x.json"], ["list", "list", "new"]])
    assert got == {"create": "EACCES", "list": "EACCES"}


def test_the_real_sddctl_submits_as_a_member_of_the_submit_group_only(spool: Path) -> None:
    """What clamd's VirusEvent does as user clamav: `sddctl submit --clamav`, here as nobody."""
    sddctl = Path(sys.executable).parent / "sddctl"
    base = [SETPRIV, f"--reuid={SUBMITTER}", f"--regid={SUBMITTER}", "--inh-caps=-all", "--bounding-set=-all",
            "--no-new-privs"]
    probe = subprocess.run([*base, "--clear-groups", str(sddctl), "--help"], capture_output=True, check=False,
                           timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"the venv's sddctl cannot run as an unprivileged user here: {probe.stderr[-300:]!r}")
    env = {"CLAM_VIRUSEVENT_FILENAME": "/home/alice/x.exe", "CLAM_VIRUSEVENT_VIRUSNAME": "Test.Sig"}
    argv = [str(sddctl), "submit", "--clamav", "--spool", str(spool)]
    member = subprocess.run([*base, f"--groups={SUBMIT_GID}", *argv], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert member.returncode == 0, member.stdout + member.stderr
    outsider = subprocess.run([*base, "--clear-groups", *argv], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
    assert outsider.returncode != 0 and "Permission denied" in outsider.stderr, outsider.stdout + outsider.stderr
    [delivered] = list((spool / "new").iterdir())
    assert delivered.stat().st_uid == SUBMITTER
    detection = json.loads(delivered.read_text())
    assert (detection["type"], detection["file_path"], detection["threat_name"]) == (
        "malware", "/home/alice/x.exe", "Test.Sig")
    assert not list((spool / "tmp").iterdir())
