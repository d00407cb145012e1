"""Putting a quarantined file back (`restore_file`): where it came from, as it was, and only into the
directory it left.

The bytes are decoded from the vault into a scratch file beside the target, verified against the
recorded SHA-256, given back their owner, mode and times, and placed with `link(2)` (never replaces a
name) or, for `on_conflict: overwrite`, `rename(2)` over the regular file there. The directory must be the
one the quarantine recorded — same inode, inode generation and owner — unless forced: a directory deleted
and re-created, or now someone else's, must not receive another user's file. Stopped before the point of
no return (the link or rename), the scratch file is removed and nothing changed.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import time
from typing import Any

from .abortable import Abort
from .errors import Conflict, Forbidden, NotFound, PrimitiveError
from .safepath import Parent, describe_type, generation, lstat_at, open_parent, open_regular
from .vault import NEW_FILE, Vault, decoded, sha256_fd, write_all

ON_CONFLICT = ("fail", "rename", "overwrite")  # the same in the action, the API and sddctl


def restore(vault: Vault, qid: str, *, on_conflict: str, force: bool, abort: Abort) -> tuple[dict[str, Any], bool]:
    """Recreate the item at its original path. Returns (metadata, already).

    An existing file there is kept (`fail`), restored beside (`rename`) or replaced (`overwrite`). The
    directory must be the one the file left (`directory_changes`) unless `force`."""
    what = "restore_file"
    if on_conflict not in ON_CONFLICT:
        raise ValueError(f"on_conflict must be one of {ON_CONFLICT}, got {on_conflict!r}")
    meta = vault.read_meta(qid)
    path = meta["original_path"]
    with open_parent(path, what=what) as parent:
        target = parent.name
        st = lstat_at(parent)
        if st is not None and same_content(parent, parent.name, meta, abort):
            # Already there, byte-identical: a repeat, or a crash after the link but before the
            # metadata said so. Either way the restore is done.
            if meta.get("state") != "restored" or meta.get("restored_path") != path:
                meta = vault.set_state(qid, state="restored", restored_at=time.time(), restored_path=path)
            return meta, True
        if meta.get("state") == "restored":
            done = meta.get("restored_path") or path
            if os.path.dirname(done) == os.path.dirname(path) and same_content(
                    parent, os.path.basename(done), meta, abort):
                return meta, True
        changed = directory_changes(parent, meta)
        if changed and not force:
            raise Forbidden(f"{what}: {os.path.dirname(path) or '/'} is not the directory {qid} was "
                            f"quarantined from ({'; '.join(changed)}); not restoring into it without force")
        replace = False
        if st is not None:
            if on_conflict == "fail":
                raise Conflict(f"{what}: {path} already exists; not overwritten "
                               f"(on_conflict: rename restores beside it, overwrite replaces it)")
            if on_conflict == "rename":
                target = free_name(parent, f"{parent.name}.restored-{qid[:8]}")
            elif not stat.S_ISREG(st.st_mode):
                raise Conflict(f"{what}: {path} exists and is {describe_type(st.st_mode)}; only a regular "
                               f"file is overwritten")
            else:
                replace = True
        replaced = write_restored(vault, parent, target, qid, meta, replace, abort)
    restored_path = os.path.join(os.path.dirname(path), target)
    extra: dict[str, Any] = {"replaced": replaced}
    if changed:
        extra["forced_directory"] = changed
    meta = vault.set_state(qid, state="restored", restored_at=time.time(), restored_path=restored_path)
    return {**meta, **extra}, False


def same_content(parent: Parent, name: str, meta: dict[str, Any], abort: Abort | None = None) -> bool:
    try:
        if not stat.S_ISREG(os.stat(name, dir_fd=parent.fd, follow_symlinks=False).st_mode):
            return False  # never open a FIFO or device just to compare it
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent.fd)
    except OSError:
        return False
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode) or fst.st_size != meta.get("size", fst.st_size):
            return False
        return sha256_fd(fd, abort) == meta["sha256"]
    finally:
        os.close(fd)


def free_name(parent: Parent, base: str) -> str:
    for n in range(1, 1000):
        name = base if n == 1 else f"{base}-{n}"
        try:
            os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except FileNotFoundError:
            return name
    raise Conflict(f"restore_file: no free name beside {parent.path}")


def write_restored(vault: Vault, parent: Parent, target: str, qid: str, meta: dict[str, Any], replace: bool,
                   abort: Abort) -> dict[str, Any] | None:
    """Decode into a scratch file beside the target, verify, give it its owner, mode and times, then
    place it: `link()` (never replaces a name) or, with `replace`, `rename()` over the existing file.
    Returns what was replaced (its SHA-256 and size as read just before), or None."""
    what = "restore_file"
    tmp = f".sdd-restore-{qid[:16]}.tmp"
    stale = lstat_at(Parent(parent.fd, tmp, ""))
    if stale is not None:
        if stat.S_ISREG(stale.st_mode) and stale.st_uid == os.geteuid() and stale.st_nlink == 1:
            os.unlink(tmp, dir_fd=parent.fd)  # ours, left by a crash
        else:
            tmp = f".sdd-restore-{secrets.token_hex(8)}.tmp"
    bfd = vault.open_blob(qid, meta)
    placed = False
    old_fd = -1
    try:
        tfd = os.open(tmp, NEW_FILE, 0o600, dir_fd=parent.fd)
        try:
            for chunk in decoded(bfd):
                abort.check()
                write_all(tfd, chunk)
            os.fsync(tfd)
            if sha256_fd(tfd, abort) != meta["sha256"]:
                raise PrimitiveError(f"{what}: restored bytes of {qid} do not match SHA-256 {meta['sha256']}",
                                  retryable=False)
            _give_back(tfd, qid, meta)
            os.fsync(tfd)
        finally:
            os.close(tfd)
        replaced: dict[str, Any] | None = None
        nlink = 0
        if replace:
            try:
                old_fd, fst = open_regular(Parent(parent.fd, target, parent.path), what)
            except NotFound:
                replace = False  # gone meanwhile: nothing to replace, and link() still never clobbers
            else:
                nlink = fst.st_nlink
                replaced = {"sha256": sha256_fd(old_fd, abort), "size": fst.st_size, "uid": fst.st_uid}
        abort.commit()
        if replace:
            os.rename(tmp, target, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
            if replaced is not None and os.fstat(old_fd).st_nlink >= nlink:
                replaced["changed_meanwhile"] = True  # the name held another file by the time it was replaced
        else:
            try:
                # link() never replaces an existing name: the no-clobber guarantee, atomically.
                os.link(tmp, target, src_dir_fd=parent.fd, dst_dir_fd=parent.fd, follow_symlinks=False)
            except FileExistsError:
                raise Conflict(f"{what}: {os.path.join(os.path.dirname(parent.path), target)} appeared "
                               f"while restoring; not overwritten") from None
            os.unlink(tmp, dir_fd=parent.fd)
        placed = True
        os.fsync(parent.fd)
        return replaced
    finally:
        os.close(bfd)
        if old_fd >= 0:
            os.close(old_fd)
        if not placed:
            try:
                os.unlink(tmp, dir_fd=parent.fd)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise

def directory_changes(parent: Parent, meta: dict[str, Any]) -> list[str]:
    """How the open directory differs from the one recorded at quarantine (empty: the same, or nothing
    was recorded because the item predates the record)."""
    rec = meta.get("parent")
    if not isinstance(rec, dict):
        return []
    st = os.fstat(parent.fd)
    out = []
    gen, was = generation(parent.fd), rec.get("generation")
    # A re-created directory may get the freed inode number back; its generation is new.
    if (st.st_dev, st.st_ino) != (rec.get("dev"), rec.get("ino")) or (gen is not None and was is not None
                                                                      and gen != was):
        out.append("it was deleted and re-created since (another inode)")
    if st.st_uid != rec.get("uid"):
        out.append(f"its owner is uid {st.st_uid}, was uid {rec.get('uid')}")
    return out


def _give_back(fd: int, qid: str, meta: dict[str, Any]) -> None:
    """The restored file's owner, mode and times, as recorded."""
    what = "restore_file"
    try:
        os.fchown(fd, meta["uid"], meta["gid"])
    except PermissionError as exc:
        if os.geteuid() == 0:
            raise Forbidden(f"{what}: the system refused to give {qid} its owner "
                            f"{meta['uid']}:{meta['gid']} ({exc.strerror}); it stays in the vault") from None
    try:
        os.fchmod(fd, meta["mode"])  # after chown, which would clear set-id bits
    except PermissionError as exc:
        # The hardened unit forbids creating set-uid/set-gid files (RestrictSUIDSGID=yes).
        raise Forbidden(f"{what}: the system refused mode {meta['mode']:04o} for {qid} "
                        f"({exc.strerror}); set-uid/set-gid files cannot be restored by the "
                        f"hardened service, so it stays in the vault") from None
    os.utime(fd, ns=(meta.get("atime_ns", meta["mtime_ns"]), meta["mtime_ns"]))
