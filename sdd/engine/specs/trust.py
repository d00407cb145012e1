"""Whether code found under a path may run as root: `path_problem(path)` is None only when every component
from `/` to it — each directory passed through, symbolic links resolved one by one — is owned by root and
writable by no one else (sshd's StrictModes). Used for workflow directories (the loader's
`require_root_owned`) and for `scripts_dir` and the scripts in it (`sdd/actions/script.py`, the daemon's
start-up checks).

Walking the path as given, rather than only its resolved form, also checks the directories that hold the
symbolic links: a link inside a world-writable directory such as /tmp is refused, since whoever may write
there could replace it. Only reads metadata (lstat, readlink); follows nothing it has not checked.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection

MAX_LINKS = 40   # as the kernel's ELOOP limit


def _mode(st: os.stat_result) -> str:
    return f"mode {stat.S_IMODE(st.st_mode):04o}"


def _problem(path: str, st: os.stat_result, owners: Collection[int], allow_sticky: bool) -> str | None:
    if st.st_uid not in owners:
        whom = "root" if set(owners) == {0} else "root or this user"
        return f"{path} is owned by uid {st.st_uid}, not {whom}"
    if st.st_mode & 0o022:
        if allow_sticky and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
            return None   # user mode: a sticky directory (/tmp) lets others add names, not replace ours
        who = "everyone" if st.st_mode & 0o002 else f"its group (gid {st.st_gid})"
        return f"{path} is writable by {who} ({_mode(st)})"
    return None


def path_problem(path: str | os.PathLike[str], *, owners: Collection[int] = (0,),
                 allow_sticky: bool = False) -> str | None:
    """None when `path` (and every directory on the way to it, symlinks resolved) is owned by one of
    `owners` and not writable by group or others; else why not, naming the component. `allow_sticky`
    (for user mode only) accepts world-writable sticky directories on the way, as /tmp."""
    text = os.fspath(path)
    if not text.startswith("/"):
        return f"{text} is not an absolute path"
    try:
        st = os.lstat("/")
    except OSError as exc:
        return f"/ cannot be read: {exc.strerror}"
    reason = _problem("/", st, owners, allow_sticky)
    if reason:
        return reason
    pending = [p for p in text.split("/") if p]
    current, writable = "/", {"/": bool(st.st_mode & 0o002)}   # directories passed: world-writable?
    links = 0
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)   # `current` is a real directory already checked
            continue
        candidate = os.path.join(current, name)
        try:
            st = os.lstat(candidate)
        except OSError as exc:
            return f"{candidate} cannot be used: {exc.strerror}"
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                return f"{text}: too many symbolic links"
            if st.st_uid not in owners:
                return f"{candidate} is a symbolic link owned by uid {st.st_uid}"
            if writable.get(current):
                return f"{candidate} is a symbolic link inside the world-writable {current}"
            try:
                target = os.readlink(candidate)
            except OSError as exc:
                return f"{candidate} cannot be read: {exc.strerror}"
            pending = [p for p in target.split("/") if p] + pending
            if target.startswith("/"):
                current = "/"
            continue
        reason = _problem(candidate, st, owners, allow_sticky)
        if reason:
            return reason
        if pending and not stat.S_ISDIR(st.st_mode):
            return f"{candidate} is not a directory"
        current = candidate
        writable[current] = bool(st.st_mode & 0o002)
    return None


__all__ = ["MAX_LINKS", "path_problem"]
