"""Linux inotify read directly through ctypes: which names appear in one directory, handed over in bulk.

A low layer: it knows nothing of spools and logs nothing; what a name, a queue overflow or a failed read means
is the caller's business, told through three callbacks. One thread, one read per up to ~2,000 events.
(watchdog's observer costs three threads and, per event, several Python objects and a linear search of its
move-grouping queue — most of the intake's CPU in a burst.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import threading
from collections.abc import Callable

# inotify(7): the events that mean "a name appeared in the directory", and the queue-overflow marker.
_IN_MOVED_TO, _IN_CREATE, _IN_Q_OVERFLOW, _IN_ONLYDIR = 0x80, 0x100, 0x4000, 0x01000000
_IN_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


def parse_events(buf: bytes) -> tuple[list[str], bool]:
    """The names in one read of inotify events, and whether the kernel's queue overflowed."""
    unpack, size = _IN_EVENT.unpack_from, _IN_EVENT.size
    names: list[str] = []
    overflow = False
    off, end = 0, len(buf)
    while off + size <= end:
        _, mask, _, length = unpack(buf, off)
        off += size
        if mask & _IN_Q_OVERFLOW:
            overflow = True
        elif length:
            raw = buf[off:off + length]
            nul = raw.find(b"\0")
            names.append(os.fsdecode(raw if nul < 0 else raw[:nul]))
        off += length
    return names, overflow


class NameWatch:
    """Watches `path` (non-recursive, created and moved-to events only) from construction until `stop()`.

    The watch is armed when the constructor returns, so a caller may scan the directory afterwards and miss
    nothing. `on_names` gets the names of each read, `on_overflow` is called after them when events were lost,
    and `on_error` once if reading fails (the thread then ends; never called for the failure `stop()` causes).
    All three run on the watch's thread."""

    def __init__(self, path: str, on_names: Callable[[list[str]], None], on_overflow: Callable[[], None],
                 on_error: Callable[[OSError], None]) -> None:
        self._on_names, self._on_overflow, self._on_error = on_names, on_overflow, on_error
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        if libc.inotify_add_watch(fd, os.fsencode(path), _IN_CREATE | _IN_MOVED_TO | _IN_ONLYDIR) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        self._fd = fd  # the watch is armed from here on
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sdd-inotify", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if not self._thread.is_alive():
            for fd in (self._fd, self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            try:
                poller.poll()
                buf = os.read(self._fd, 65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                if not self._stopping:
                    self._on_error(exc)
                return
            names, overflow = parse_events(buf)
            if names:
                self._on_names(names)
            if overflow:
                self._on_overflow()
