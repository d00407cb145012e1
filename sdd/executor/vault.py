"""The quarantine vault: `STATE/vault` (0700), one neutralised blob (0600) and one metadata JSON per item.

The vault describes itself: `<id>.bin` holds a header (magic + a random 32-byte key) and the file's bytes
XOR-ed with that key, so it can never run or be re-detected as is; `<id>.json` beside it holds the
metadata (SHA-256, size, original path, owner, mode, times, detection, threat, state). Both are written to
a temporary name, fsync'd and renamed, so a restore needs nothing but the vault; the database is only
the index used for listing.

Crash safety of a quarantine: blob written, fsync'd and its SHA-256 re-checked from disk → metadata
written → only then the original unlinked (relative to its pinned parent, after checking it is still the
same inode). A re-run after a crash at any point ends in the same state with the same id, because the id
is derived from the content hash and the original path.

Cancellation safety: everything before the commit point (copying, verifying) checks an `Abort` between
chunks and, when stopped, removes its scratch copy; the scratch copy of a path has one fixed name, so the
vault never holds more than one per file. After the commit point (rename, metadata, unlink) the work is
short and completes. The metadata also records what later actions must check: the file's inode (dev, ino),
which `kill_process` matches against processes after the file has left, and its directory's inode and owner,
which `restore_file` compares before it puts the file back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from typing import Any

from .abortable import Abort
from .errors import Forbidden, NotFound, PrimitiveError
from .safepath import (
    Parent,
    generation,
    lstat_at,
    open_dir_nofollow,
    open_parent,
    open_regular,
    unlink_same,
)

MAGIC = b"SDDQ\x01\x00\x00\x00"
KEY_LEN = 32
HEADER_LEN = len(MAGIC) + KEY_LEN
CHUNK = 1 << 20  # a multiple of KEY_LEN, so the keystream stays aligned across chunks
QID_RE = re.compile(r"[0-9a-f]{32}")
STALE_TMP_SECONDS = 3600.0
NEW_FILE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def quarantine_id(sha256: str, original_path: str) -> str:
    """Deterministic: the same file (content and path) quarantined twice gets the same id."""
    return hashlib.sha256(f"{sha256}\0{original_path}".encode("utf-8", "surrogateescape")).hexdigest()[:32]


class _Xor:
    """The vault's keystream, built as long as the longest chunk it has met (a CHUNK's worth built up front
    cost more than the quarantine of a small file: a seventh of the daemon's time in an outbreak)."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.stream = b""
        self.offset = 0

    def __call__(self, data: bytes) -> bytes:
        n = len(data)
        start = self.offset % KEY_LEN
        self.offset += n
        if len(self.stream) < start + n:
            self.stream = self.key * ((start + n) // KEY_LEN + 1)
        ks = self.stream[start:start + n]
        return (int.from_bytes(data, "little") ^ int.from_bytes(ks, "little")).to_bytes(n, "little")


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_chunks(fd: int, offset: int = 0) -> Iterator[bytes]:
    while True:
        data = os.pread(fd, CHUNK, offset)
        if not data:
            return
        offset += len(data)
        yield data


def decoded(fd: int) -> Iterator[bytes]:
    header = os.pread(fd, HEADER_LEN, 0)
    if len(header) != HEADER_LEN or not header.startswith(MAGIC):
        raise PrimitiveError("vault blob has no valid header; it is damaged", retryable=False)
    xor = _Xor(header[len(MAGIC):])
    for chunk in read_chunks(fd, HEADER_LEN):
        yield xor(chunk)


class Vault:
    """Sync operations on the vault directory; the async actions call them in worker threads."""

    def __init__(self, path: os.PathLike[str] | str) -> None:
        # The state directory is configuration (trusted); resolve it once so a legitimately symlinked
        # /var/lib or home still works, then every open below refuses symlinks.
        self.path = os.path.realpath(os.fspath(path))

    # -- the directory -------------------------------------------------------------------------------
    def _open(self, create: bool = True) -> int:
        """The vault directory as an fd, created 0700 on first use; refuses one someone else could write."""
        if create:
            try:
                os.makedirs(self.path, mode=0o700, exist_ok=True)
            except FileExistsError:
                pass
        fd = open_dir_nofollow(self.path, what="vault")
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            os.close(fd)
            raise Forbidden(f"vault {self.path} is owned by uid {st.st_uid}, not by the daemon")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
        return fd

    def _write_json(self, vfd: int, name: str, data: dict[str, Any]) -> None:
        tmp = f".tmp-{secrets.token_hex(8)}.json"
        fd = os.open(tmp, NEW_FILE, 0o600, dir_fd=vfd)
        try:
            write_all(fd, json.dumps(data, indent=1, sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=vfd, dst_dir_fd=vfd)
        os.fsync(vfd)

    def read_meta(self, qid: str) -> dict[str, Any]:
        if not QID_RE.fullmatch(qid):
            raise NotFound(f"quarantine id {qid!r:.80} is not a valid id (32 hexadecimal digits)")
        try:
            vfd = self._open(create=False)
        except NotFound:
            raise NotFound(f"no quarantined item with id {qid}") from None
        try:
            return self._read_meta(vfd, qid)
        finally:
            os.close(vfd)

    @staticmethod
    def _read_meta(vfd: int, qid: str) -> dict[str, Any]:
        try:
            fd = os.open(f"{qid}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=vfd)
        except FileNotFoundError:
            raise NotFound(f"no quarantined item with id {qid}") from None
        try:
            with os.fdopen(fd, "rb", closefd=False) as fh:
                meta = json.loads(fh.read(1 << 20))
        finally:
            os.close(fd)
        if not isinstance(meta, dict) or meta.get("quarantine_id") != qid:
            raise PrimitiveError(f"vault metadata for {qid} is damaged", retryable=False)
        return meta

    def items(self) -> list[dict[str, Any]]:
        """Every item's metadata (the vault alone, no database), newest first."""
        try:
            vfd = self._open(create=False)
        except NotFound:
            return []
        try:
            out = []
            for name in os.listdir(vfd):
                if name.endswith(".json") and QID_RE.fullmatch(name[:-5]):
                    try:
                        out.append(self._read_meta(vfd, name[:-5]))
                    except (PrimitiveError, ValueError, OSError):
                        continue
            return sorted(out, key=lambda m: m.get("quarantined_at", 0), reverse=True)
        finally:
            os.close(vfd)

    def find(self, original_path: str, state: str | None = "quarantined",
             hints: tuple[str, ...] = (), run_id: str | None = None) -> dict[str, Any] | None:
        """The newest item from `original_path` (in `state`, quarantined by `run_id` when given); `hints`
        are ids to try first (the database index), so the whole vault is only read when the index does not
        know the answer."""
        def wanted(meta: dict[str, Any]) -> bool:
            return (meta.get("original_path") == original_path and (state is None or meta.get("state") == state)
                    and (run_id is None or meta.get("run_id") == run_id))
        for qid in hints:
            try:
                meta = self.read_meta(qid)
            except (NotFound, PrimitiveError, ValueError):
                continue
            if wanted(meta):
                return meta
        for meta in self.items():
            if wanted(meta):
                return meta
        return None

    def set_state(self, qid: str, **changes: Any) -> dict[str, Any]:
        vfd = self._open()
        try:
            meta = self._read_meta(vfd, qid)
            meta.update(changes)
            self._write_json(vfd, f"{qid}.json", meta)
            return meta
        finally:
            os.close(vfd)

    # -- quarantine ----------------------------------------------------------------------------------
    def quarantine(self, path: str, *, detection_id: str | None = None, threat_name: str | None = None,
                   run_id: str | None = None, hints: tuple[str, ...] = (),
                   before_act: Callable[[], None] | None = None,
                   abort: Abort | None = None) -> tuple[dict[str, Any], bool]:
        """Move the regular file at `path` (already checked: absolute, normalised, inside the roots) into
        the vault. Returns (metadata, already): `already` when it had been quarantined by an earlier call.
        `before_act` (the rate limit) runs once the file is known to be quarantinable, before anything
        changes, so refused paths do not use up the budget. `abort` stops it before its commit point."""
        what = "quarantine_file"
        abort = abort or Abort()
        with open_parent(path, what=what) as parent:
            if lstat_at(parent) is None:
                earlier = self.find(path, hints=hints)
                if earlier is not None:
                    return earlier, True
                raise NotFound(f"{what}: {path} does not exist")
            fd, fst = open_regular(parent, what)
            try:
                if before_act is not None:
                    before_act()
                return self._quarantine_fd(parent, fd, fst, detection_id, threat_name, run_id, abort), False
            finally:
                os.close(fd)

    @staticmethod
    def _sweep(vfd: int, older_than: float = STALE_TMP_SECONDS) -> None:
        """Remove temporary files a crash left behind (never one a running call may still be writing)."""
        cutoff = time.time() - older_than
        for name in os.listdir(vfd):
            if name.startswith(".tmp-"):
                try:
                    if os.stat(name, dir_fd=vfd, follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(name, dir_fd=vfd)
                except FileNotFoundError:
                    pass

    @staticmethod
    def scratch_name(original_path: str) -> str:
        """The one scratch name a path's copy is written under: a retry, or the next attempt after a crash,
        replaces the earlier scratch copy instead of adding a second one."""
        digest = hashlib.sha256(original_path.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return f".tmp-q-{digest}.bin"

    def _copy(self, vfd: int, tmp: str, parent: Parent, fd: int, fst: os.stat_result,
              abort: Abort) -> tuple[str, int]:
        """Write the neutralised copy under `tmp` and verify it from disk; returns (sha256, size)."""
        what = "quarantine_file"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=vfd)  # a scratch copy left by a crash: ours (the caller holds the path's lock)
        bfd = os.open(tmp, NEW_FILE, 0o600, dir_fd=vfd)
        try:
            key = secrets.token_bytes(KEY_LEN)
            write_all(bfd, MAGIC + key)
            xor, digest, size = _Xor(key), hashlib.sha256(), 0
            for chunk in read_chunks(fd):
                abort.check()
                digest.update(chunk)
                size += len(chunk)
                write_all(bfd, xor(chunk))
            abort.check()
            os.fsync(bfd)
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns) != (fst.st_size, fst.st_mtime_ns) or size != fst.st_size:
                raise PrimitiveError(f"{what}: {parent.path} changed while being copied; left in place")
            sha = digest.hexdigest()
            # Check what reached the disk, not what we meant to write, before the original goes.
            check = hashlib.sha256()
            for chunk in decoded(bfd):
                abort.check()
                check.update(chunk)
            if check.hexdigest() != sha:
                raise PrimitiveError(f"{what}: the vault copy of {parent.path} does not verify; left in place")
            return sha, size
        finally:
            os.close(bfd)

    def _quarantine_fd(self, parent: Parent, fd: int, fst: os.stat_result, detection_id: str | None,
                       threat_name: str | None, run_id: str | None, abort: Abort) -> dict[str, Any]:
        what = "quarantine_file"
        vfd = self._open()
        self._sweep(vfd)
        tmp = self.scratch_name(parent.path)
        try:
            sha, size = self._copy(vfd, tmp, parent, fd, fst, abort)
            qid = quarantine_id(sha, parent.path)
            pst = os.fstat(parent.fd)
            meta = {
                "format": 1, "quarantine_id": qid, "sha256": sha, "size": size,
                "original_path": parent.path, "uid": fst.st_uid, "gid": fst.st_gid,
                "mode": stat.S_IMODE(fst.st_mode), "mtime": fst.st_mtime, "mtime_ns": fst.st_mtime_ns,
                "atime_ns": fst.st_atime_ns, "nlink": fst.st_nlink, "detection_id": detection_id,
                "threat_name": threat_name, "run_id": run_id, "quarantined_at": time.time(),
                "state": "quarantined", "blob": f"{qid}.bin",
                # The file as the kernel knows it, for kill_process once the name is gone.
                "dev": fst.st_dev, "ino": fst.st_ino,
                # The directory it came from, which restore_file must find again.
                "parent": {"dev": pst.st_dev, "ino": pst.st_ino, "uid": pst.st_uid, "gid": pst.st_gid,
                           "generation": generation(parent.fd)},
            }
            try:
                previous: dict[str, Any] | None = self._read_meta(vfd, qid)
            except (NotFound, PrimitiveError, ValueError):
                previous = None
            abort.commit()  # the point of no return: from here on the quarantine completes or is undone
            os.rename(tmp, f"{qid}.bin", src_dir_fd=vfd, dst_dir_fd=vfd)
            self._write_json(vfd, f"{qid}.json", meta)
            try:
                unlink_same(parent, fst, what)
            except BaseException:
                self._undo(vfd, qid, previous)  # the original stays: so must nothing of it in the vault
                raise
            return meta
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=vfd)
            os.close(vfd)

    def _undo(self, vfd: int, qid: str, previous: dict[str, Any] | None) -> None:
        """Take back an item whose original could not be removed: put back the record it replaced (a file
        quarantined, restored and quarantined again has one id), else remove blob and record."""
        if previous is not None:
            self._write_json(vfd, f"{qid}.json", previous)
            return
        for name in (f"{qid}.json", f"{qid}.bin"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=vfd)
        os.fsync(vfd)

    # -- restore (restoring.py) ----------------------------------------------------------------------
    def open_blob(self, qid: str, meta: dict[str, Any]) -> int:
        """The item's blob, opened read-only (the caller closes it)."""
        vfd = self._open()
        try:
            try:
                return os.open(meta["blob"], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=vfd)
            except FileNotFoundError:
                raise NotFound(f"restore_file: the vault blob of {qid} is missing") from None
        finally:
            os.close(vfd)


def sha256_fd(fd: int, abort: Abort | None = None) -> str:
    digest = hashlib.sha256()
    for chunk in read_chunks(fd):
        if abort is not None:
            abort.check()
        digest.update(chunk)
    return digest.hexdigest()
