"""Real processes for the kill tests: started as root or as another user (setpriv), each stopped by the test.

`Procs.run(argv, user=...)` starts a program; `Procs.python(code, user=...)` runs Debian's python3 (root's
pyenv interpreter is unreachable for other users) and waits for the line `ready` it prints once set up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

SETPRIV = shutil.which("setpriv")
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534

needs_other_user = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None or not os.path.exists(SYSTEM_PYTHON),
    reason="needs root, setpriv and Debian's python3 to start processes as another user")


def as_user(argv: list[str], uid: int | None) -> list[str]:
    if uid is None:
        return argv
    assert SETPRIV is not None
    return [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # poll interval of a deadline-bounded wait on another process


class Procs:
    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def run(self, argv: list[str], user: int | None = None, exe: Path | None = None) -> subprocess.Popen[str]:
        """Start `argv`; with `exe`, wait until the kernel shows the process executing that file."""
        p = subprocess.Popen(as_user(argv, user), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        self.started.append(p)
        if exe is not None:
            want = os.stat(exe)

            def running() -> bool:
                try:
                    st = os.stat(f"/proc/{p.pid}/exe")
                except OSError:
                    return False
                return (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino)
            wait_until(running, f"pid {p.pid} to exec {exe}")
        return p

    def python(self, code: str, user: int | None = None, ignore_term: bool = False) -> subprocess.Popen[str]:
        prefix = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else ""
        p = self.run([SYSTEM_PYTHON, "-c", prefix + code], user)
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line == "ready\n", f"child said {line!r}"
        return p

    def stop(self) -> None:
        for p in self.started:
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.stop()


def holder_code(path: Path, how: str = "open", extra: str = "") -> str:
    """Python that holds `path` (open, or mapped with its descriptor closed), prints ready, then sleeps."""
    if how == "open":
        hold = f"f = open({str(path)!r}, 'rb')"
    else:
        # libc's mmap, then close: Python's mmap module keeps a duplicate descriptor open.
        hold = ("import ctypes, os\n"
                "libc = ctypes.CDLL(None); libc.mmap.restype = ctypes.c_void_p\n"
                "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, "
                "ctypes.c_long]\n"
                f"fd = os.open({str(path)!r}, os.O_RDONLY)\n"
                "assert libc.mmap(None, 4096, 1, 2, fd, 0) not in (None, 2**64 - 1)\n"
                "os.close(fd)")
    return f"import sys, time\n{hold}\n{extra}\nprint('ready', flush=True)\ntime.sleep(300)\n"
