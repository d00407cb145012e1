"""sdd.bus: the D-Bus bridge, the only part of the daemon that imports dbus-next. Re-exports only; see bridge.py."""

from .address import BusKind, parse_bus_spec, resolve_address
from .bridge import BridgeState, BusBridge
from .model import BUS_NAME, INTERFACE, MAX_STRING, OBJECT_PATH, Properties, clean_str, signal_for

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
