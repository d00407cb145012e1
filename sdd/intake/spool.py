"""The spool as producers see it: its directories, and what one file in them must be to be accepted.

Reading and judging one file lives here, apart from the intake's watching and claiming, so it can be tested
(and reused for detections that arrive by other ways, see the daemon's submit) without a spool or a thread:
`read_spool_file` reads it safely (O_NOFOLLOW|O_NONBLOCK, a regular file with no other hard links, at most
`max_size` bytes), `parse_detection` decides whether the bytes are one detection, and both raise
`SpoolRejection` whose message is the reason written next to a rejected file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdd_client.detection import parse_json, too_deep

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_NOT_A_NAME_BYTE = re.compile("[\ud800-\udc7f\udd00-\udfff]")
MAX_NESTING = 64  # a detection deeper than this is hostile, and would hurt the engine's renderer
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class SpoolRejection(Exception):
    """A spool file that cannot be accepted; the message is the reason written next to it."""


@dataclass(frozen=True)
class SpoolLayout:
    """The spool's directories: producers write into tmp/ and rename into new/; sdd claims files into cur/
    and moves the ones it cannot accept, each with a `.reason` file, into rejected/."""

    root: Path

    @property
    def new(self) -> Path:
        return self.root / "new"

    @property
    def cur(self) -> Path:
        return self.root / "cur"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    def ensure(self, mode: int = 0o755) -> None:
        """Creates the spool directories; refuses any of them being a symlink (we never follow one)."""
        for path in (self.root, self.new, self.cur, self.tmp, self.rejected):
            try:
                os.mkdir(path, mode)
            except FileExistsError:
                pass
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, f"spool directory {path} is not a directory (symlink?)")


def parse_detection(raw: bytes) -> dict[str, Any]:
    """One UTF-8 JSON object with a non-empty string `type`; raises SpoolRejection saying what is wrong."""
    if not raw.strip():
        raise SpoolRejection("empty file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpoolRejection(f"not valid UTF-8 (byte {exc.start})") from None
    try:
        obj = parse_json(text)  # the client's rule, so `sddctl validate-detection` says the same
    except ValueError as exc:
        raise SpoolRejection(str(exc)) from None
    if not isinstance(obj, dict):
        what = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(obj), "a number")
        raise SpoolRejection(f"expected one JSON object, got {what}")
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind.strip():
        raise SpoolRejection("field 'type' is missing or not a non-empty string")
    ident = obj.get("id")
    if ident is not None and (isinstance(ident, bool) or not isinstance(ident, (str, int))):
        raise SpoolRejection("field 'id' must be a string")
    # Both checks walk the whole value; the cheap C-level tests in front skip them for ordinary detections.
    if text.count("[") + text.count("{") > MAX_NESTING and too_deep(obj, MAX_NESTING):
        raise SpoolRejection(f"JSON nested deeper than {MAX_NESTING} levels")
    # "\ud800" escapes decode to lone surrogates, which are no text. U+DC80..U+DCFF are the exception: they are
    # the bytes of a file name that is not UTF-8 (surrogateescape, as the ClamAV hook writes them), which
    # os.fsencode maps back to the very same bytes, and the store keeps them escaped.
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and \
            _NOT_A_NAME_BYTE.search(json.dumps(obj, ensure_ascii=False)):
        raise SpoolRejection("invalid Unicode (lone surrogate escape)")
    return obj


def describe_mode(mode: int) -> str:
    """What a file that is not a regular one is, for a rejection reason: `a symbolic link`, `a FIFO`, ..."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def read_spool_file(path: str | Path, max_size: int) -> bytes:
    """Reads a claimed file without following symlinks or opening FIFOs/devices; raises SpoolRejection."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise SpoolRejection(f"is {describe_mode(st.st_mode)}, not a regular file")
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpoolRejection("is a symbolic link, not a regular file") from None
        raise
    try:
        st = os.fstat(fd)  # the inode actually opened, whatever happened to the name since lstat
        if not stat.S_ISREG(st.st_mode):
            raise SpoolRejection(f"is {describe_mode(st.st_mode)}, not a regular file")
        if st.st_nlink > 1:
            raise SpoolRejection("has other hard links (it may be someone else's file)")
        if st.st_size > max_size:
            raise SpoolRejection(f"too large: {st.st_size} bytes (limit {max_size})")
        # Ask for the size fstat gave (+1 to see growth), not for max_size: os.read allocates what it is asked
        # for, and a 1 MiB buffer per small file (mmap'd, shrunk, unmapped) was most of the intake's CPU.
        want = min(st.st_size, max_size) + 1
        data = os.read(fd, want)
        if len(data) == want and want <= max_size:  # it grew since fstat: read on, up to the limit
            chunks, total = [data], len(data)
            while total <= max_size:
                more = os.read(fd, max_size + 1 - total)
                if not more:
                    break
                chunks.append(more)
                total += len(more)
            data = b"".join(chunks)
        if len(data) > max_size:
            raise SpoolRejection(f"too large: more than {max_size} bytes (limit {max_size})")
        return data
    finally:
        os.close(fd)
