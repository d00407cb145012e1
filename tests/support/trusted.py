"""Directories root may run code from in system mode (scripts, workflows): their whole path from / is root's
and writable by no one else, which pytest's tmp_path (under the world-writable /tmp) is not. Made under
/run, removed when the test process exits."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_base: Path | None = None


def trusted_dir(name: str) -> Path:
    """A new empty directory (mode 0755) on a path that `sdd.engine.path_problem` accepts when run as root."""
    global _base
    if _base is None:
        try:
            _base = Path(tempfile.mkdtemp(prefix="sdd-tests-", dir="/run"))
        except OSError:
            _base = Path(tempfile.mkdtemp(prefix="sdd-tests-"))   # not root: such tests skip anyway
        os.chmod(_base, 0o755)
        atexit.register(shutil.rmtree, _base, True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_base))
    os.chmod(path, 0o755)
    return path


@contextlib.contextmanager
def traversable_tmpdir(prefix: str, mode: int = 0o711) -> Iterator[Path]:
    """A new directory under /tmp that other users may pass through (0711) or also list (0755): pytest's
    tmp_path is root's alone, and an unprivileged daemon or a child of another uid must reach below it.
    Removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(d, mode)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
