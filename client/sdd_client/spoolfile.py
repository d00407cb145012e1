"""Writing detection files into sdd's spool: the one writer `sddctl submit` and `sdd-ingest` share (the ClamAV
hook, `hook/sdd-virusevent.c`, follows the same steps in C).

Maildir rules, durability first. A file is created under `SPOOL/tmp/` with a unique name
(`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0640), written whole, and `rename(2)`d into `SPOOL/new/`, so the daemon
never sees half a detection. A detection counts as written only once it is durable:

- one file (`write_one`: `sddctl submit`, a Wazuh alert, a slow stream): fsync the file, rename it, fsync
  `new/` — or, for a producer in group `sdd-submit` that may not open `new/` for reading (mode 1730),
  fsync the file again, which commits the rename with the journal on ext4, XFS and btrfs;
- several files at once (`write_batch`: a burst on a stream): write and rename them all, then one
  `syncfs(2)` of the spool's file system makes the whole batch durable with one journal commit instead of
  one per file. The daemon may claim a file before that barrier returns; it records the detection durably
  itself before it deletes the file.

Lean on purpose: `sdd-ingest` is started once per Wazuh alert, so this module imports only os, json, time
and errno (ctypes when a batch first needs syncfs, tomllib only when a config file names the spool): no
pathlib, dataclasses, secrets or socket. The spool is found as the contract says: `--spool`, else
`$SDD_SPOOL`, else `paths.spool` of the config file (`--config`, else `$SDD_CONFIG`, else /etc/sdd/sdd.toml
when it exists), else /var/spool/sdd. clamd runs `VirusEvent` with an empty environment, so every fallback
works without one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time

from .errors import ClientError

TYPE_CHECKING = False  # typing costs milliseconds at start-up; the annotations are strings anyway
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

DEFAULT_SPOOL = "/var/spool/sdd"
SYSTEM_CONFIG = "/etc/sdd/sdd.toml"
MAX_DETECTION = 1024 * 1024  # the daemon rejects bigger spool files
MAX_BATCH = 1024  # files per syncfs barrier; bounds how long one batch keeps a producer waiting
FILE_MODE = 0o640

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # O_PATH: tmp/ and new/ may be 1730
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
# Lone surrogates U+DC80..U+DCFF are bytes of a file name that is not UTF-8 (Python's surrogateescape); the
# daemon accepts them as `\udcXX` escapes. Any other lone surrogate is no text at all.
_NOT_A_NAME_BYTE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


class SubmitError(ClientError):
    """The detection cannot be written (bad data, no spool, permissions)."""


class UsageError(ClientError):
    """The caller asked for something impossible (missing variable, bad option)."""

    exit_code = 2


def resolve_spool(explicit: str | None = None, config: str | None = None,
                  environ: Mapping[str, str] | None = None, system_config: str = SYSTEM_CONFIG) -> str:
    """The spool directory, by the contract's order (see the module docstring)."""
    env = os.environ if environ is None else environ
    if explicit:
        return explicit
    if env.get("SDD_SPOOL"):
        return env["SDD_SPOOL"]
    named = config or env.get("SDD_CONFIG") or None
    config_file = named or (system_config if os.path.isfile(system_config) else None)
    if config_file is not None:
        spool = _spool_from_config(config_file, required=named is not None)
        if spool is not None:
            return spool
    return DEFAULT_SPOOL


def _spool_from_config(path: str, required: bool) -> str | None:
    import tomllib  # only here: most producers never read a config file

    try:
        with open(path, encoding="utf-8") as fh:
            raw = tomllib.loads(fh.read())
    except FileNotFoundError:
        if required:
            raise UsageError(f"config file {path} does not exist") from None
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    paths = raw.get("paths", {})
    spool = paths.get("spool") if isinstance(paths, dict) else None
    if spool is None:
        return None
    if not isinstance(spool, str) or not os.path.isabs(spool):
        raise UsageError(f"{path}: paths.spool must be an absolute path, got {spool!r}")
    return spool


def encode_detection(detection: Mapping[str, Any]) -> bytes:
    """The spool file's bytes: compact UTF-8 JSON. A file name's non-UTF-8 bytes (U+DC80..U+DCFF, as
    os.environ and os.listdir give them) become `\\udcXX` escapes, which the daemon maps back to the same
    bytes; any other lone surrogate, and anything over the spool's size limit, is refused."""
    kind = detection.get("type")
    if not isinstance(kind, str) or not kind.strip():
        raise UsageError("a detection needs a non-empty 'type' (--type)")
    try:
        text = json.dumps(detection, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SubmitError(f"detection is not JSON: {exc}") from None
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        bad = _NOT_A_NAME_BYTE.search(text)
        if bad is not None:
            raise SubmitError(f"detection holds a lone surrogate U+{ord(bad.group()):04X} (not text, "
                              "not a file-name byte)") from None
        # Inside a JSON string the 6 characters `\udcff` are exactly the escape of that surrogate.
        data = text.encode("utf-8", "backslashreplace")
    if len(data) > MAX_DETECTION:
        raise SubmitError(f"detection is {len(data)} bytes; the spool accepts at most {MAX_DETECTION}")
    return data


def _hostname() -> str:
    # Maildir names must not contain '/' or ':'; keep them short and plain.
    return "".join(c for c in os.uname().nodename if c.isalnum() or c in "-_")[:32] or "host"


class SpoolWriter:
    """An open spool: `tmp/` and `new/` held by descriptor (O_PATH, so a group member of a 1730 directory
    can hold them), so every file of a long stream lands in the same directories even if a path changes."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._tmp = self._new = -1
        self._tmp = self._open_dir("tmp")
        self._new = self._open_dir("new")
        self._host = _hostname()
        self._pid = os.getpid()
        self._random = os.urandom(4).hex()
        self._serial = 0
        self._syncfs: Callable[[int], int] | None = None

    def _open_dir(self, sub: str) -> int:
        path = os.path.join(self.root, sub)
        try:
            return os.open(path, _DIR_FLAGS)
        except OSError as exc:
            self.close()
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise SubmitError(f"spool directory {path} does not exist (is sdd installed, is the spool "
                                  "right?)") from None
            raise SubmitError(f"cannot open spool directory {path}: {exc.strerror}") from None

    def close(self) -> None:
        for fd in (self._tmp, self._new):
            if fd >= 0:
                os.close(fd)
        self._tmp = self._new = -1

    def __enter__(self) -> SpoolWriter:  # noqa: PYI034 -- subclasses are not expected
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _name(self) -> str:
        # Unique without a syscall per file: time, pid, a serial, and random bits drawn once per writer (a
        # name left in tmp/ by a dead process with the same pid and serial is skipped by O_EXCL).
        self._serial += 1
        return f"{time.time_ns()}.{self._pid}_{self._serial}{self._random}.{self._host}.json"

    def _create(self, data: bytes) -> tuple[str, int]:
        """A new file in tmp/ holding `data`, still open; raises SubmitError."""
        for _ in range(3):
            name = self._name()
            try:
                fd = os.open(name, _CREATE_FLAGS, FILE_MODE, dir_fd=self._tmp)
                break
            except FileExistsError:
                continue  # a stale file of a dead process with our pid and serial: take another name
            except OSError as exc:
                raise SubmitError(f"cannot create {self.root}/tmp/{name}: {exc.strerror}") from None
        else:
            raise SubmitError(f"cannot create a unique file name in {self.root}/tmp")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            self._discard(name, fd)
            raise SubmitError(f"cannot write the detection into {self.root}: {exc.strerror}") from None
        return name, fd

    def _discard(self, name: str, fd: int) -> None:
        os.close(fd)
        try:
            os.unlink(name, dir_fd=self._tmp)
        except OSError:
            pass

    def _publish(self, name: str, fd: int) -> None:
        try:
            os.rename(name, name, src_dir_fd=self._tmp, dst_dir_fd=self._new)
        except OSError as exc:
            self._discard(name, fd)
            raise SubmitError(f"cannot write the detection into {self.root}: {exc.strerror}") from None

    def write_one(self, data: bytes) -> str:
        """One encoded detection, durable when this returns: its file name in new/. Raises SubmitError."""
        name, fd = self._create(data)
        try:
            try:
                os.fsync(fd)
            except OSError as exc:
                self._discard(name, fd)
                raise SubmitError(f"cannot write the detection into {self.root}: {exc.strerror}") from None
            self._publish(name, fd)
            if not self._fsync_new_dir():
                # new/ is not ours to open (group member of a 1730 directory): the rename is committed with
                # the file's next fsync on journaling file systems.
                os.fsync(fd)
        except OSError as exc:
            raise SubmitError(f"cannot make {self.root}/new/{name} durable: {exc.strerror}") from None
        finally:
            try:
                os.close(fd)
            except OSError:
                pass
        return name

    def _fsync_new_dir(self) -> bool:
        try:
            fd = os.open(os.path.join(self.root, "new"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            os.fsync(fd)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def write_batch(self, items: Sequence[bytes]) -> list[str | SubmitError]:
        """Several encoded detections (at most MAX_BATCH) with one durability barrier. Returns, for each item
        in order, its file name in new/ or the error that kept it out; the names are durable on return."""
        if len(items) == 1:
            try:
                return [self.write_one(items[0])]
            except SubmitError as exc:
                return [exc]
        results: list[str | SubmitError] = []
        open_fds: list[int] = []
        try:
            for data in items:
                try:
                    name, fd = self._create(data)
                    self._publish(name, fd)
                except SubmitError as exc:
                    results.append(exc)
                    continue
                open_fds.append(fd)
                results.append(name)
            if open_fds:
                error = self._barrier(open_fds)
                if error is not None:
                    # Renamed already, so the daemon will see them; only their survival of a crash is unknown.
                    results = [SubmitError(f"{r}: written, but not known to be durable: {error}")
                               if isinstance(r, str) else r for r in results]
        finally:
            for fd in open_fds:
                os.close(fd)
        return results

    def _barrier(self, fds: list[int]) -> str | None:
        """Makes every file of the batch, and its rename, durable; the error text when that failed."""
        syncfs = self._syncfs_function()
        if syncfs is not None:
            if syncfs(fds[0]) == 0:
                return None
            import ctypes

            return os.strerror(ctypes.get_errno())
        try:  # no syncfs: one fsync each (renamed already, so each commits its rename too)
            for fd in fds:
                os.fsync(fd)
        except OSError as exc:
            return exc.strerror or str(exc)
        self._fsync_new_dir()
        return None

    def _syncfs_function(self) -> Callable[[int], int] | None:
        if self._syncfs is None:
            try:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                self._syncfs = libc.syncfs
            except (ImportError, OSError, AttributeError):
                self._syncfs = _no_syncfs
        return None if self._syncfs is _no_syncfs else self._syncfs


def _no_syncfs(fd: int) -> int:  # pragma: no cover - marker for "fall back to fsync"
    return -1


__all__ = [
    "DEFAULT_SPOOL",
    "MAX_BATCH",
    "MAX_DETECTION",
    "SYSTEM_CONFIG",
    "SpoolWriter",
    "SubmitError",
    "UsageError",
    "encode_detection",
    "resolve_spool",
]
