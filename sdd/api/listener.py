"""The listening socket: created with its final mode and group before anyone can see it, or inherited.

Binding happens inside a private 0700 directory next to the configured path; the socket is chowned and
chmodded there, where no other user can reach it, and then renamed into place — so there is no instant at
which the socket exists at `paths.socket` with a looser mode than configured, and the process umask (shared
with every other thread of the daemon) is never touched. A socket file already at the path is replaced only
when nothing answers on it; a daemon that answers makes the new one refuse to start. A lock file next to the
socket closes the race between two daemons starting at once. Under systemd socket activation the inherited
descriptor is used as it is (systemd already applied `SocketMode=`/`SocketGroup=`).
"""

from __future__ import annotations

import fcntl
import grp
import logging
import os
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sdd_client import protocol

from .errors import AlreadyRunning, SocketError

log = logging.getLogger(__name__)

SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
PROBE_TIMEOUT = 2.0


@dataclass
class Listener:
    """A listening socket and what must be undone when it closes."""

    sock: socket.socket
    path: Path | None  # None when inherited: the socket file is systemd's to remove
    inode: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we created
    lock_fd: int | None = None

    def close(self) -> None:
        if self.path is not None and self.inode is not None:
            # Remove the file only if it is still ours (a successor may already have replaced it).
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self.inode:
                    os.unlink(self.path)
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def inherited(fd: int) -> Listener:
    """Wraps a descriptor passed by systemd socket activation, checking it is a listening Unix stream."""
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise SocketError(f"inherited descriptor {fd} is not a Unix stream socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.listen(512)
    sock.setblocking(False)
    return Listener(sock, None)


def parse_mode(mode: str | int) -> int:
    value = int(mode, 8) if isinstance(mode, str) else mode
    if not 0 <= value <= 0o777:
        raise SocketError(f"socket mode {mode!r} is not a permission mode")
    return value


def bind(path: Path, mode: str | int, group: str | None, *, backlog: int = 512, quiet: bool = False,
         lock_fd: int | None = None) -> Listener:
    """Binds a fresh listening socket at path with the given mode and group (see the module docstring).
    `lock_fd`: the socket's lock (`lock(path)`), when the caller took it already; the listener then owns it."""
    path = Path(os.path.abspath(path))
    perm = parse_mode(mode)
    if len(os.fsencode(path)) > SUN_PATH_MAX - 24:  # room for the private directory's name
        raise SocketError(f"socket path {path} is too long for a Unix socket (max about {SUN_PATH_MAX - 24} bytes)")
    parent = path.parent
    try:
        parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise SocketError(f"cannot create the socket directory {parent}: {exc.strerror}") from None
    _check_directory(parent)
    gid = _resolve_group(group, logging.INFO if quiet else logging.WARNING)
    if lock_fd is None:
        lock_fd = lock(path)
    try:
        _check_existing(path)
        sock, inode = _bind_private(path, perm, gid, backlog)
    except BaseException:
        os.close(lock_fd)
        raise
    return Listener(sock, path, inode, lock_fd)


def _check_directory(parent: Path) -> None:
    """The socket's directory must be ours: whoever can rename entries in it could swap the socket for their
    own and see every client's requests (think of /tmp/sdd-UID made in advance by another user)."""
    try:
        st = os.lstat(parent)
    except OSError as exc:
        raise SocketError(f"cannot inspect the socket directory {parent}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SocketError(f"socket directory {parent} is not a directory (a symbolic link?)")
    if st.st_uid not in (0, os.geteuid()):
        raise SocketError(f"socket directory {parent} belongs to uid {st.st_uid}, not to root or this daemon")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise SocketError(f"socket directory {parent} is writable by others (mode {stat.S_IMODE(st.st_mode):04o})")


def _resolve_group(group: str | None, level: int) -> int | None:
    if not group:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        log.log(level, "socket group %r does not exist; the socket keeps the daemon's group", group)
        return None


def lock(path: str | os.PathLike[str]) -> int:
    """Takes the lock file next to the socket (held as long as the descriptor is open); AlreadyRunning when
    another sdd holds it."""
    path = Path(os.path.abspath(path))
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise SocketError(f"cannot create the socket directory {path.parent}: {exc.strerror}") from None
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SocketError(f"cannot open the socket lock {lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(f"another sdd is already running (or starting) on {path}: it holds {lock_path}") from None
    return fd


def _check_existing(path: Path) -> None:
    """Refuses when a live daemon answers at path or path is not a socket; a stale socket is left to be
    replaced by the rename (atomically, so clients never see no socket at all)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        return  # the rename replaces the link itself, never what it points at
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketError(f"{path} exists and is not a socket; refusing to replace it")
    if answers_ping(path):
        raise AlreadyRunning(f"another sdd is already answering on {path}")
    log.info("replacing the stale socket %s", path)


def answers_ping(path: Path, timeout: float = PROBE_TIMEOUT) -> bool:
    """True when something accepts a connection at path and replies to `ping` (or does not refuse)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(timeout)
    try:
        probe.connect(os.fspath(path))
    except OSError:
        return False  # ECONNREFUSED: nobody listens; the file is stale
    try:
        protocol.send_message(probe, protocol.request(1, "ping"))
        reply = protocol.recv_message(probe, max_depth=protocol.REPLY_MAX_DEPTH)
        return reply is not None
    except (OSError, protocol.ProtocolError):
        # Something accepted the connection: whatever it is, it is alive, so the path is not ours to take.
        return True
    finally:
        probe.close()


def _bind_private(path: Path, perm: int, gid: int | None, backlog: int) -> tuple[socket.socket, tuple[int, int]]:
    private = tempfile.mkdtemp(prefix=".sdd-bind-", dir=path.parent)  # mode 0700, ours alone
    temp = os.path.join(private, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(temp)
        if gid is not None:
            try:
                os.chown(temp, -1, gid, follow_symlinks=False)
            except PermissionError:
                log.warning("cannot give %s to group %d (not permitted); keeping the daemon's group", path, gid)
        os.chmod(temp, perm)  # the private directory stops anyone from connecting before this
        sock.listen(backlog)
        os.rename(temp, path)
        st = os.lstat(path)
    except OSError as exc:
        sock.close()
        raise SocketError(f"cannot create the socket {path}: {exc.strerror or exc}") from None
    finally:
        try:
            if os.path.lexists(temp):
                os.unlink(temp)
            os.rmdir(private)
        except OSError:
            pass
    sock.setblocking(False)
    return sock, (st.st_dev, st.st_ino)


__all__ = ["Listener", "answers_ping", "bind", "inherited", "lock", "parse_mode"]
