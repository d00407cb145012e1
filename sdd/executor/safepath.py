"""Opening paths as root without following symlinks (the ClamAV CVE-2020-3350 class of attack).

A path is walked from `/` one component at a time with `openat(O_NOFOLLOW | O_DIRECTORY)`, so a symlink
in any component — including one swapped in while we walk — makes the open fail instead of leading us
somewhere else. The caller gets the parent directory as a file descriptor and acts relative to it
(`dir_fd=`), so later steps cannot be redirected either.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from dataclasses import dataclass
from typing import Self

from .errors import Conflict, Forbidden, NotFound

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


@dataclass
class Parent:
    """An open parent directory and the final component's name; close it (or use `with`)."""

    fd: int
    name: str
    path: str

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_dir_nofollow(path: str, *, what: str = "path") -> int:
    """Open a normalised absolute directory path component by component, refusing symlinks."""
    fd = os.open("/", _DIR_FLAGS)
    walked = ""
    try:
        for part in [p for p in path.split("/") if p]:
            walked += "/" + part
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _walk_error(exc, fd, part, walked, what) from None
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_parent(path: str, *, what: str = "path") -> Parent:
    """Open the parent directory of a normalised absolute path without following any symlink."""
    head, _, name = path.rpartition("/")
    fd = open_dir_nofollow(head or "/", what=what)
    return Parent(fd=fd, name=name, path=path)


def _walk_error(exc: OSError, dir_fd: int, part: str, walked: str, what: str) -> Exception:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        try:
            st = os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            return Forbidden(f"{what}: {walked} is a symbolic link; symlinks are never followed")
        return Forbidden(f"{what}: {walked} is not a directory")
    if exc.errno == errno.ENOENT:
        return NotFound(f"{what}: directory {walked} does not exist")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return Forbidden(f"{what}: permission denied on {walked}")
    return exc


def lstat_at(parent: Parent) -> os.stat_result | None:
    """The final component's own status (not following a symlink), or None when it does not exist."""
    try:
        return os.stat(parent.name, dir_fd=parent.fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def describe_type(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def require_regular(parent: Parent, st: os.stat_result, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise Forbidden(f"{what}: {parent.path} is {describe_type(st.st_mode)}; only regular files are handled")


def open_regular(parent: Parent, what: str) -> tuple[int, os.stat_result]:
    """Open the final component read-only; refuses anything but a regular file, before opening it when
    possible (so a FIFO or device is never opened) and again on the open descriptor (a swap in between)."""
    st = lstat_at(parent)
    if st is None:
        raise NotFound(f"{what}: {parent.path} does not exist")
    require_regular(parent, st, what)
    try:
        fd = os.open(parent.name, _FILE_FLAGS, dir_fd=parent.fd)
    except FileNotFoundError:
        raise NotFound(f"{what}: {parent.path} disappeared while being opened") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Forbidden(f"{what}: {parent.path} became a symbolic link while being opened") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise Forbidden(f"{what}: permission denied reading {parent.path}") from None
        raise
    fst = os.fstat(fd)
    if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise Conflict(f"{what}: {parent.path} was replaced while being opened")
    return fd, fst


def unlink_same(parent: Parent, expected: os.stat_result, what: str) -> None:
    """Unlink the final component only if it is still the inode we examined (relative to the pinned parent)."""
    now = lstat_at(parent)
    if now is None:
        return
    if (now.st_dev, now.st_ino) != (expected.st_dev, expected.st_ino):
        raise Conflict(f"{what}: {parent.path} was replaced during the operation; left in place")
    try:
        os.unlink(parent.name, dir_fd=parent.fd)
    except PermissionError:
        raise Forbidden(f"{what}: permission denied removing {parent.path}") from None
    os.fsync(parent.fd)


def not_root_owned(path: str) -> str | None:
    """Why `path` (absolute, already resolved) is not root's alone: a component that is a symlink, not owned
    by root, or writable by group or others. None when every component from `/` is root's."""
    walked = "/"
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts) + 1):
        if i:
            walked = "/" + "/".join(parts[:i])
        try:
            st = os.lstat(walked)
        except OSError as exc:
            return f"{walked}: {exc.strerror}"
        if stat.S_ISLNK(st.st_mode):
            return f"{walked} is a symbolic link"
        if st.st_uid != 0:
            return f"{walked} is owned by uid {st.st_uid}, not root"
        if st.st_mode & 0o022:
            return f"{walked} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


_FS_IOC_GETVERSION = 0x80087601  # _IOR('v', 1, long)


def generation(fd: int) -> int | None:
    """The inode's generation number (ext4, xfs, btrfs): a deleted inode's number can be given to a new file or
    directory, its generation changes. None where the filesystem has none (tmpfs)."""
    try:
        raw = fcntl.ioctl(fd, _FS_IOC_GETVERSION, bytes(8))
    except OSError:
        return None
    return int(struct.unpack_from("=I", raw)[0])
