"""systemd's notification protocol without a dependency: `READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`
as datagrams on `$NOTIFY_SOCKET` (a path, or an abstract address starting with `@`), and socket
activation (`LISTEN_FDS`). Everything is a no-op when the variables are absent.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3


class Notifier:
    """Sends state lines to the service manager; never raises (a broken notify socket must not stop sdd)."""

    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if addr.startswith("@"):
            self.address = "\0" + addr[1:]  # abstract namespace
        elif addr.startswith("/"):
            self.address = addr
        self._sock: socket.socket | None = None
        self.dropped = 0  # messages the receiver had no room for
        if self.address is not None:
            try:
                # Non-blocking: a receiver that does not read (its queue holds ~10 datagrams) must never
                # freeze the daemon's event loop; a message it cannot take is dropped instead.
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                           | socket.SOCK_NONBLOCK)
            except OSError as exc:
                log.warning("cannot create the notify socket: %s", exc)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> bool:
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode("utf-8", "replace"), self.address)
            return True
        except BlockingIOError:
            self.dropped += 1
            return False
        except OSError as exc:
            log.warning("notify %s failed: %s", lines[0] if lines else "", exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *((f"STATUS={status}",) if status else ()))

    def status(self, text: str) -> bool:
        return self.notify("STATUS=" + text.replace("\n", " "))

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *((f"STATUS={status}",) if status else ()))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Seconds between `WATCHDOG=1` pings (half of `$WATCHDOG_USEC`), or None when not asked for."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


def listen_fds(unset: bool = True) -> list[int]:
    """File descriptors passed by socket activation (`LISTEN_FDS`, checked against `LISTEN_PID`)."""
    pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    if unset:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    if not count or pid != str(os.getpid()):
        return []
    try:
        n = int(count)
    except ValueError:
        return []
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(0, n)))
    for fd in fds:
        os.set_inheritable(fd, False)
    return fds
