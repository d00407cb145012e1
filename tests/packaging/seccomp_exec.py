"""Run a program under (an approximation of) the seccomp part of systemd/sdd.service.

Run by Debian's python3 (python3-seccomp provides libseccomp's bindings), not by the venv:

    /usr/bin/python3 seccomp_exec.py POLICY.json -- PROGRAM ARGS...
    /usr/bin/python3 seccomp_exec.py --protect-system RW_PATH[:RW_PATH...] -- PROGRAM ARGS...

The second form (run inside `unshare --mount --propagation private`, with CAP_SYS_ADMIN) emulates
ProtectSystem=strict + ReadWritePaths=: each listed path that exists is bind-mounted onto itself, then `/`
is remounted read-only, so only those paths stay writable. It also gives the process a /dev with only the
pseudo devices (PrivateDevices=) and read-only /proc/sys and /sys (ProtectKernelTunables=).

POLICY.json: {"allow": [syscall names], "address_families": [numbers], "deny_write_execute": bool,
"restrict_suid_sgid": bool}. Installs a filter whose default is EPERM (SystemCallErrorNumber=EPERM), allows
the listed syscalls (SystemCallFilter=), lets socket(2) create only the listed families
(RestrictAddressFamilies=), refuses memory that is writable and executable at once
(MemoryDenyWriteExecute=) and set-uid/set-gid modes (RestrictSUIDSGID=, for the chmod family), then
execs PROGRAM. Differences from systemd: a refused socket family gets EPERM, not EAFNOSUPPORT, and
RestrictSUIDSGID= is applied to chmod/fchmod/fchmodat only, not to the mode of open(O_CREAT).
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import stat
import sys

import seccomp  # type: ignore[import-not-found]


def build(policy: dict) -> seccomp.SyscallFilter:
    f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    special = {"socket", "mmap", "mprotect", "pkey_mprotect", "chmod", "fchmod", "fchmodat"}
    for name in policy["allow"]:
        if name in special:
            continue
        try:
            f.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError):
            pass  # not a syscall on this architecture (e.g. chown32 on x86_64)
    allowed = set(policy["allow"])
    if "socket" in allowed:
        for family in policy["address_families"]:
            f.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, family))
    wx = mmap.PROT_WRITE | mmap.PROT_EXEC
    for name, arg in (("mmap", 2), ("mprotect", 2), ("pkey_mprotect", 2)):
        if name not in allowed:
            continue
        if policy["deny_write_execute"]:
            for ok in (0, mmap.PROT_WRITE, mmap.PROT_EXEC):
                f.add_rule(seccomp.ALLOW, name, seccomp.Arg(arg, seccomp.MASKED_EQ, wx, ok))
        else:
            f.add_rule(seccomp.ALLOW, name)
    setid = stat.S_ISUID | stat.S_ISGID
    for name, arg in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2)):
        if name not in allowed:
            continue
        if policy["restrict_suid_sgid"]:
            f.add_rule(seccomp.ALLOW, name, seccomp.Arg(arg, seccomp.MASKED_EQ, setid, 0))
        else:
            f.add_rule(seccomp.ALLOW, name)
    return f


def protect_system(writable: list[str]) -> None:
    for path in writable:
        if os.path.isdir(path):
            _mount("--bind", path, path)
    private_devices()
    for path in ("/proc/sys", "/sys"):  # ProtectKernelTunables= (and /sys for ProtectControlGroups=)
        _mount("--bind", path, path)
        _mount("-o", "remount,bind,ro", path)
    _mount("-o", "remount,bind,ro", "/")


def private_devices() -> None:
    """PrivateDevices=: a fresh /dev holding only the pseudo devices, /dev/shm and the /dev/log link."""
    import tempfile

    staging = tempfile.mkdtemp(prefix="sdd-dev-", dir="/tmp")
    _mount("-t", "tmpfs", "-o", "mode=0755,nosuid,noexec", "tmpfs", staging)
    for node in ("null", "zero", "full", "random", "urandom", "tty"):
        target = os.path.join(staging, node)
        open(target, "wb").close()
        _mount("--bind", f"/dev/{node}", target)
    os.mkdir(os.path.join(staging, "shm"))
    _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", os.path.join(staging, "shm"))
    os.symlink("/run/systemd/journal/dev-log", os.path.join(staging, "log"))
    _mount("--move", staging, "/dev")
    os.rmdir(staging)


def _mount(*args: str) -> None:
    import subprocess

    subprocess.run(["mount", *args], check=True)


def main() -> None:
    if sys.argv[1] == "--protect-system":
        writable, sep, *argv = sys.argv[2:]
        if sep != "--" or not argv:
            sys.exit("usage: seccomp_exec.py --protect-system RW[:RW...] -- PROGRAM ARGS...")
        protect_system([p for p in writable.split(":") if p])
        os.execv(argv[0], argv)
    policy_file, sep, *argv = sys.argv[1:]
    if sep != "--" or not argv:
        sys.exit("usage: seccomp_exec.py POLICY.json -- PROGRAM ARGS...")
    with open(policy_file, encoding="utf-8") as fh:
        policy = json.load(fh)
    build(policy).load()
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
