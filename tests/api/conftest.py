"""Fixtures for the socket API tests: one real daemon per module (its tests do not disturb each other)."""

from __future__ import annotations

import grp
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import sdd_client

from tests.support.daemon import DaemonProcess

from .live import start_daemon

SYSTEM_PYTHON = "/usr/bin/python3.11"
PEER_SCRIPTS = ("peer_probe.py", "refusal_flood.py")  # run as another user: see probe_path


def why_no_other_user() -> str | None:
    """Why a test cannot run a client as another user here (None: it can)."""
    if os.geteuid() != 0:
        return f"needs root to run the client as another user (setpriv); running as uid {os.geteuid()}"
    if not shutil.which("setpriv"):
        return "setpriv (util-linux) is not installed"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is missing: the test's interpreter lives where nobody cannot read it"
    for name in ("nogroup", "users", "staff"):
        try:
            grp.getgrnam(name)
        except KeyError:
            return f"group {name!r} does not exist"
    return None


@pytest.fixture(scope="module")
def probe_path() -> Iterator[Path]:
    """A directory nobody can read holding only the client package, msgpack and the peer scripts (the venv
    is under /root)."""
    root = Path(tempfile.mkdtemp(prefix="sdd-probe-", dir="/tmp"))
    try:
        os.chmod(root, 0o755)
        os.symlink(Path(sdd_client.__file__).parent, root / "sdd_client")
        os.symlink(Path(msgpack.__file__).parent, root / "msgpack")
        for name in PEER_SCRIPTS:
            shutil.copy(Path(__file__).parent / name, root / name)
            os.chmod(root / name, 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("api"))
    try:
        yield d
    finally:
        d.close()
