"""Workarounds for dbus-next 0.2.3 that both the daemon's bridge and sdd-notifier need.

Kept in one place so that the day dbus-next is fixed or replaced, one module changes. Only imported by code
that already depends on dbus-next (the `notifier` extra, and the daemon).
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any


def close_transport(bus: Any) -> None:
    """Close a connection's socket for good: dbus-next does not always close it after `disconnect()`.

    The fd is unregistered from the event loop *before* it is closed: a closed fd that is still registered
    makes the loop silently ignore the next socket that reuses its number (its reader is never armed), which
    hangs whatever connection gets that number next.
    """
    fd = getattr(bus, "_fd", None)
    loop = getattr(bus, "_loop", None)
    if isinstance(fd, int) and fd >= 0 and loop is not None and not loop.is_closed():
        loop.remove_reader(fd)
        loop.remove_writer(fd)
    for attr in ("_stream", "_sock"):
        obj = getattr(bus, attr, None)
        if obj is not None:
            with contextlib.suppress(OSError):
                obj.close()


def probe(address: str, timeout: float) -> None:
    """Check (blocking: call it in a worker thread) that something accepts connections at a D-Bus address.

    dbus-next connects synchronously in its constructor, so a peer that accepts but never answers would
    freeze the event loop — and with it the SIGTERM handler. Raises OSError/ConnectionError when nothing
    usable answers.
    """
    from dbus_next._private.address import parse_address

    error: Exception | None = None
    for transport, options in parse_address(address):
        if transport == "unix" and ("path" in options or "abstract" in options):
            target: Any = options["path"] if "path" in options else "\0" + options["abstract"]
            family = socket.AF_UNIX
        elif transport == "tcp" and options.get("port", "").isdigit():
            target, family = (options.get("host", ""), int(options["port"])), socket.AF_INET
        else:
            error = ConnectionError(f"unusable D-Bus transport {transport!r} in {address!r}")
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(target)
                return
            except OSError as exc:
                error = exc
    raise error or ConnectionError(f"no usable transport in {address!r}")
