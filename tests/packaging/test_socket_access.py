"""Who may do what over the socket, as docs/security.md describes it for a socket opened to everyone
(`SocketMode=0666` in an sdd.socket drop-in): a member of `[api] read_groups` may read but not act, and
anyone else is refused. Real daemon, real sddctl, run as `nobody` with and without the read group."""

from __future__ import annotations

import grp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess

SETPRIV = shutil.which("setpriv")
SDDCTL = Path(sys.executable).parent / "sddctl"
NOBODY = 65534
READ_GROUP = "games"  # an ordinary group nobody is not in; stands in for e.g. "auditors"

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None,
                       reason="needs root and setpriv (util-linux) to act as an unprivileged user"),
]


def _as_nobody(groups: list[int], *args: str) -> subprocess.CompletedProcess[str]:
    group_opt = f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
    return subprocess.run([SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", group_opt, "--inh-caps=-all",
                           "--bounding-set=-all", "--no-new-privs", str(SDDCTL), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_read_groups_may_read_and_others_are_refused(tmp_path: Path) -> None:
    try:
        gid = grp.getgrnam(READ_GROUP).gr_gid
    except KeyError:
        pytest.skip(f"group {READ_GROUP} does not exist here")
    probe = _as_nobody([], "--help")
    if probe.returncode != 0:
        pytest.skip(f"the venv's sddctl cannot run as an unprivileged user here: {probe.stderr[-300:]!r}")
    d = DaemonProcess(tmp_path, user_mode=False,
                      config_overrides={"api": {"socket_group": "root", "read_groups": [READ_GROUP]}})
    try:
        d.start()
        # What SocketMode=0666 gives: everyone may connect; the daemon decides per call.
        d.runtime.chmod(0o755)
        d.socket.chmod(0o666)
        sock = ["--socket", str(d.socket)]
        reader_status = _as_nobody([gid], *sock, "status", "--json")
        assert reader_status.returncode == 0, reader_status.stdout + reader_status.stderr
        assert json.loads(reader_status.stdout)["state"] == "running"
        assert _as_nobody([gid], *sock, "history", "--json").returncode == 0
        reader_reload = _as_nobody([gid], *sock, "reload")
        assert reader_reload.returncode == 1 and "forbidden" in reader_reload.stderr, reader_reload.stderr
        stranger = _as_nobody([], *sock, "status")
        assert stranger.returncode == 1 and "forbidden" in stranger.stderr, stranger.stdout + stranger.stderr
    finally:
        d.close()
