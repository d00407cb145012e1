"""Starting the two processes when `sdd --config FILE` runs as root outside systemd (OpenSSH's monitor shape).

The root process makes the executor's socket (root:GROUP 0660, beside the API socket), gives the daemon's
user the state, spool and socket directories it needs (what `StateDirectory=` and tmpfiles do under
systemd), then forks:

- the daemon child, which drops to the user for good (setgroups, setgid, setuid, `PR_SET_NO_NEW_PRIVS`;
  the capability sets empty out with the uid) and runs the daemon, told the socket by
  `SDD_EXECUTOR_SOCKET`;
- an executor child, which serves that socket as root, for that uid only.

The root parent stays as the supervisor: nothing but `waitpid`. An executor that dies is forked again (the
daemon's requests in flight fail retryably and its next call reconnects); when the daemon ends, the
executor is stopped and the supervisor exits with the daemon's status. SIGTERM/SIGINT/SIGHUP are passed on
to the daemon. The vault (`STATE/vault`) stays root's 0700, so the daemon never reads a blob.
"""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("sdd.executor")
PR_SET_NAME = 15
PR_SET_NO_NEW_PRIVS = 38
SOCKET_ENV = "SDD_EXECUTOR_SOCKET"
RESTART_DELAY = 0.5


class StartError(Exception):
    """Privilege separation cannot be set up (no such user, a directory it cannot be given)."""


def daemon_account(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise StartError(f"user {name!r} does not exist: sdd runs its daemon as that user in system mode. "
                         f"Create it (the Debian package does, systemd/sdd.sysusers), or set "
                         f"[actions] daemon_user = \"\" to keep one root process") from None


def give_directories(account: pwd.struct_passwd, state: Path, spool: Path, socket_dir: Path) -> None:
    """The daemon's directories, its own (as StateDirectory= would); the vault inside stays root's."""
    for d in (state, spool, *(spool / s for s in ("tmp", "new", "cur", "rejected")), socket_dir):
        existed = d.is_dir()
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            # The owner only: an existing directory keeps its group (the spool's is sdd-submit, whose
            # members deliver detections) and its mode (tmpfiles.d's or the administrator's).
            os.fchown(fd, account.pw_uid, -1 if existed else account.pw_gid)
        finally:
            os.close(fd)
    vault = state / "vault"
    vault.mkdir(mode=0o700, exist_ok=True)
    os.chown(vault, 0, 0, follow_symlinks=False)
    os.chmod(vault, 0o700, follow_symlinks=False)
    for name in os.listdir(state):  # a database made by an earlier root daemon becomes the user's
        if name.startswith("sdd.db"):
            os.chown(state / name, account.pw_uid, account.pw_gid, follow_symlinks=False)


def listening_socket(path: Path, gid: int) -> socket.socket:
    with_umask = os.umask(0o177)
    try:
        if path.is_socket():
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
    finally:
        os.umask(with_umask)
    os.chown(path, 0, gid)
    os.chmod(path, 0o660)
    sock.listen(16)
    sock.set_inheritable(False)
    return sock


def drop_privileges(account: pwd.struct_passwd) -> None:
    """For good: supplementary groups, gid, uid; then no_new_privs (setuid binaries cannot give them back)."""
    groups = [g.gr_gid for g in grp.getgrall() if account.pw_name in g.gr_mem]
    os.setgroups(sorted({account.pw_gid, *groups}))
    os.setresgid(account.pw_gid, account.pw_gid, account.pw_gid)
    os.setresuid(account.pw_uid, account.pw_uid, account.pw_uid)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    os.environ.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    if os.getuid() != account.pw_uid or os.geteuid() == 0:
        raise OSError("privileges were not dropped")


def set_name(name: str) -> None:
    """The name `ps` shows (comm, at most 15 bytes): which half of sdd a process is."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def separate(config: Any) -> None:
    """In the root process: set up, fork, and supervise. Returns only in the daemon child (now the user)."""
    account = daemon_account(config.actions.daemon_user)
    socket_path = config.paths.socket.parent / "executor.sock"
    give_directories(account, config.paths.state, config.paths.spool, config.paths.socket.parent)
    listener = listening_socket(socket_path, account.pw_gid)
    supervisor = os.getpid()
    daemon_pid = os.fork()
    if daemon_pid == 0:
        listener.close()
        os.umask(0o027)  # as sdd.service's UMask=
        drop_privileges(account)
        os.environ[SOCKET_ENV] = str(socket_path)
        return
    set_name("sdd-monitor")
    _supervise(config, listener, account.pw_uid, daemon_pid, supervisor)


def _start_executor(config: Any, listener: socket.socket, uid: int, daemon_pid: int, supervisor: int) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        os.umask(0o077)
        set_name("sdd-executor")
        try:
            from .service import serve_forever
            serve_forever(config, listener, uid, {daemon_pid, supervisor})
            code = 0
        except BaseException:
            logging.getLogger("sdd.executor").exception("executor failed")
        finally:
            os._exit(code)
    return pid


def _supervise(config: Any, listener: socket.socket, uid: int, daemon_pid: int, supervisor: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: _forward(daemon_pid, s))
    executor = _start_executor(config, listener, uid, daemon_pid, supervisor)
    status = 1
    while True:
        try:
            pid, wstatus = os.wait()
        except ChildProcessError:
            break
        if pid == daemon_pid:
            status = os.waitstatus_to_exitcode(wstatus)
            break
        if pid == executor:
            log.warning("executor (pid %d) ended with status %d; starting it again", pid,
                        os.waitstatus_to_exitcode(wstatus))
            time.sleep(RESTART_DELAY)  # a crash loop costs a fork every half second, not a busy loop
            executor = _start_executor(config, listener, uid, daemon_pid, supervisor)
    _forward(executor, signal.SIGTERM)
    try:
        os.waitpid(executor, 0)
    except ChildProcessError:
        pass
    sys.exit(status if status >= 0 else 128 - status)


def _forward(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
