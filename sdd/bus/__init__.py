"""sdd.bus: the D-Bus bridge. Re-exports only; see bridge.py (the bridge), process.py (the daemon's side of it,
which runs it in a process of its own) and child.py (that process).

Only the bridge process imports dbus-next: `BusBridge` loads on first use, so the daemon that imports
`sdd.bus.process` does not load it."""

from typing import Any

from .address import BusKind, parse_bus_spec, resolve_address
from .model import (
    BUS_NAME,
    INTERFACE,
    MAX_STRING,
    OBJECT_PATH,
    BridgeState,
    Properties,
    clean_str,
    signal_for,
)

__all__ = [
    "BUS_NAME",
    "INTERFACE",
    "MAX_STRING",
    "OBJECT_PATH",
    "BridgeState",
    "BusBridge",
    "BusKind",
    "Properties",
    "clean_str",
    "parse_bus_spec",
    "resolve_address",
    "signal_for",
]


def __getattr__(name: str) -> Any:
    if name == "BusBridge":
        from .bridge import BusBridge

        return BusBridge
    raise AttributeError(f"module 'sdd.bus' has no attribute {name!r}")
