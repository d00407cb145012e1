"""Which bus the bridge talks to: the `dbus.bus` setting parsed into a `BusKind`, and the address it names now."""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping


class BusKind(str, enum.Enum):
    SYSTEM = "system"
    SESSION = "session"
    NONE = "none"
    ADDRESS = "address"


def parse_bus_spec(spec: str) -> BusKind:
    """`system` | `session` | `none` | a D-Bus address (`unix:path=...`, `tcp:host=...,port=...`)."""
    if spec in ("system", "session", "none"):
        return BusKind(spec)
    if ":" not in spec:
        raise ValueError(f"dbus.bus: {spec!r} is neither system, session, none nor a D-Bus address")
    from dbus_next._private.address import parse_address

    try:
        entries = parse_address(spec)
    except Exception as e:
        raise ValueError(f"dbus.bus: {spec!r} is not a valid D-Bus address: {e}") from e
    # dbus-next accepts addresses it then cannot use; insist on what it can connect to.
    for transport, options in entries:
        usable = (transport == "unix" and ("path" in options or "abstract" in options)) or (
            transport == "tcp" and options.get("port", "").isdigit()
        )
        if not usable:
            raise ValueError(
                f"dbus.bus: {spec!r}: use unix:path=..., unix:abstract=... or tcp:host=...,port=..."
            )
    return BusKind.ADDRESS


def resolve_address(kind: BusKind, spec: str, environ: Mapping[str, str] = os.environ) -> str:
    """The address to connect to now (re-resolved on each attempt: a session bus socket may appear later)."""
    if kind is BusKind.ADDRESS:
        return spec
    if kind is BusKind.SYSTEM:
        return environ.get("DBUS_SYSTEM_BUS_ADDRESS") or "unix:path=/run/dbus/system_bus_socket"
    if kind is BusKind.SESSION:
        if environ.get("DBUS_SESSION_BUS_ADDRESS"):
            return environ["DBUS_SESSION_BUS_ADDRESS"]
        runtime = environ.get("XDG_RUNTIME_DIR")
        if runtime:
            return f"unix:path={runtime}/bus"
        raise ConnectionError("no session bus: DBUS_SESSION_BUS_ADDRESS and XDG_RUNTIME_DIR are both unset")
    raise ValueError(f"no address for bus kind {kind.value}")
