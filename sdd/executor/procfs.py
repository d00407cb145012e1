"""What the kernel says about processes, read from /proc — never what a process says about itself.

`comm`, `argv[0]` and the executable's base name are chosen by whoever started the process, so nothing here
reads them to decide anything. What is read: a pid's thread-group id (a thread id is not a process),
its start time, its parent, its real uid, and the inodes it executes (`/proc/PID/exe`), holds open
(`/proc/PID/fd/*`) or maps (`/proc/PID/maps`). Every inode check compares device and inode numbers.

A process is pinned with a pidfd (`Pinned`): signals go through it, so a pid that is reused after the process
exits can never be signalled by mistake; what is read from /proc/PID is trusted only when the pinned process
is still alive after the read (a live process keeps its pid, so the read was about it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import stat
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

PF_KTHREAD = 0x00200000
MAX_FDS = 65536          # per process: enough for any real one, and a bound on the work a claim can cause
MAX_MAP_LINES = 262144
MAPS_CHUNK = 1 << 16


@dataclass(frozen=True)
class FileIdentity:
    """The detected file as the kernel knows it.

    From the live file (`source="file"`) device and inode are enough: a process that holds the inode holds
    that very file. From the vault's record (`source="vault"`, the name is gone) the inode number could have
    been given to another file since, so size and modification time must match too, and a mapping must still
    carry the original name with the kernel's `(deleted)` mark."""

    dev: int
    ino: int
    path: str
    source: str
    size: int | None = None
    mtime_ns: int | None = None

    def matches(self, st: os.stat_result) -> bool:
        if (st.st_dev, st.st_ino) != (self.dev, self.ino) or not stat.S_ISREG(st.st_mode):
            return False
        if self.source == "vault":
            return st.st_size == self.size and st.st_mtime_ns == self.mtime_ns
        return True

    def matches_mapping(self, dev: int, ino: int, name: str) -> bool:
        if (dev, ino) != (self.dev, self.ino):
            return False
        return self.source != "vault" or name == f"{self.path} (deleted)"


def pids() -> list[int]:
    """Every thread-group leader (a readdir of /proc lists processes, not their threads)."""
    return sorted(int(n) for n in os.listdir("/proc") if n.isdigit())


def _status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            text = fh.read(65536).decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return {}
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key in ("Tgid", "PPid", "Uid"):
            out[key] = value.strip()
    return out


def tgid(pid: int) -> int | None:
    """The thread group `pid` belongs to; equal to `pid` only for a process (its leader). None if gone."""
    value = _status(pid).get("Tgid")
    return int(value) if value and value.isdigit() else None


def real_uid(pid: int) -> int | None:
    value = _status(pid).get("Uid", "").split()
    return int(value[0]) if value and value[0].isdigit() else None


def _stat_fields(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return data[data.rfind(b")") + 2:].split()  # the name in parentheses is the process's own choice


def parent(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else None


def is_kernel_thread(pid: int) -> bool:
    fields = _stat_fields(pid)
    try:
        return pid == 2 or int(fields[1]) == 2 or bool(int(fields[6]) & PF_KTHREAD)
    except (IndexError, ValueError):
        return False


def ancestors(pid: int) -> set[int]:
    out: set[int] = set()
    while pid > 1 and pid not in out:
        out.add(pid)
        ppid = parent(pid)
        if ppid is None:
            break
        pid = ppid
    return out | {1}


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (processes, not threads), nearest first."""
    by_parent: dict[int, list[int]] = {}
    for p in pids():
        ppid = parent(p)
        if ppid is not None:
            by_parent.setdefault(ppid, []).append(p)
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = by_parent.get(todo.pop(0), [])
        out.extend(k for k in kids if k not in out)
        todo.extend(kids)
    return out


def exe(pid: int) -> tuple[str | None, os.stat_result | None]:
    """The executable as the kernel records it: its path (with ` (deleted)` when unlinked) and its inode."""
    try:
        return os.readlink(f"/proc/{pid}/exe"), os.stat(f"/proc/{pid}/exe")
    except OSError:
        return None, None


def links(pid: int, ident: FileIdentity) -> list[str]:
    """How `pid` holds the detected file: "executes", "open", "mapped" (empty: it does not)."""
    return _links_many(pid, (ident,))[0]


def scan_links(idents: Sequence[FileIdentity]) -> list[dict[int, list[str]]]:
    """One walk of /proc for several detected files (fuser for many at once): for each file, in order, the
    processes linked to it and how, as `links` says. Each process's exe, fds and maps are read once."""
    found: list[dict[int, list[str]]] = [{} for _ in idents]
    if not idents:
        return found
    for pid in pids():
        for i, how in enumerate(_links_many(pid, idents)):
            if how:
                found[i][pid] = how
    return found


def _links_many(pid: int, idents: Sequence[FileIdentity]) -> list[list[str]]:
    found: list[list[str]] = [[] for _ in idents]
    inodes = {ident.ino for ident in idents}
    try:
        st: os.stat_result | None = os.stat(f"/proc/{pid}/exe")
    except OSError:
        st = None
    if st is not None and st.st_ino in inodes:
        for i, ident in enumerate(idents):
            if ident.matches(st):
                found[i].append("executes")
    opened = [False] * len(idents)
    with contextlib.suppress(OSError):
        for name in os.listdir(f"/proc/{pid}/fd")[:MAX_FDS]:
            try:
                fst = os.stat(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if fst.st_ino not in inodes:
                continue
            for i, ident in enumerate(idents):
                if not opened[i] and ident.matches(fst):
                    opened[i] = True
                    found[i].append("open")
            if all(opened):
                break
    mapped = [False] * len(idents)
    tokens = [b" %d" % ino for ino in inodes]
    with contextlib.suppress(OSError), open(f"/proc/{pid}/maps", "rb") as fh:
        lines, tail = 0, b""
        while lines < MAX_MAP_LINES and not all(mapped):
            chunk = fh.read(MAPS_CHUNK)
            if not chunk:
                break
            block, newline, rest = (tail + chunk).rpartition(b"\n")
            if not newline:
                tail = rest  # no complete line yet
                continue
            tail = rest
            # Most blocks name none of the inodes: skip them without splitting a line (a false hit only
            # costs the exact parse below).
            if any(t in block for t in tokens):
                _match_maps(block.split(b"\n")[:MAX_MAP_LINES - lines], idents, mapped, found)
            lines += block.count(b"\n") + 1
        if tail and lines < MAX_MAP_LINES and any(t in tail for t in tokens):
            _match_maps([tail], idents, mapped, found)  # a last line without its newline
    return found


def _match_maps(lines: list[bytes], idents: Sequence[FileIdentity], mapped: list[bool],
                found: list[list[str]]) -> None:
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 5 or parts[4] == b"0":
            continue
        major, _, minor = parts[3].partition(b":")
        try:
            dev, ino = os.makedev(int(major, 16), int(minor, 16)), int(parts[4])
        except ValueError:
            continue
        name = os.fsdecode(parts[5]) if len(parts) > 5 else ""
        for i, ident in enumerate(idents):
            if not mapped[i] and ident.matches_mapping(dev, ino, name):
                mapped[i] = True
                found[i].append("mapped")


class Gone(Exception):
    """The process is no longer there (exited, or never was)."""


class NotAProcess(Exception):
    """The number names a thread, not a thread-group leader."""


class Pinned:
    """One process held by a pidfd, with the start time it had when pinned (psutil's `create_time()`)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self.fd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise Gone(pid) from None
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # a thread id: pidfds name processes
                raise NotAProcess(pid) from None
            raise
        try:
            self.start_time = psutil.Process(pid).create_time()
        except psutil.Error:
            self.close()
            raise Gone(pid) from None
        if not self.alive():
            self.close()
            raise Gone(pid)

    def alive(self) -> bool:
        """False once the process has exited (a zombie has exited); reads of /proc/PID made before a True
        answer were about this process."""
        if self.fd < 0:
            return False
        readable, _, _ = select.select([self.fd], [], [], 0)
        return not readable

    def signal(self, sig: int) -> bool:
        """Send `sig` to this very process; False when it has exited. PermissionError passes through."""
        try:
            signal.pidfd_send_signal(self.fd, sig)
            return True
        except ProcessLookupError:
            return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"Pinned({self.pid}, started {self.start_time:.2f})"
