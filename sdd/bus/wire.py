"""The bridge's signals as D-Bus wire bytes, built cheaply: pure, no dbus-next here.

dbus-next marshals each message in Python through a generic signature walker (~100 µs a signal), and every
detection makes eight signals. sdd's signals are few and fixed (`model.SIGNALS`), so the header of each
(path, interface, member, signature) is marshalled once at import, and a message is that header with its
body length and serial filled in, followed by a body of strings and doubles. The bytes are exactly what
dbus-next would send for the same signal (tests/bus/test_wire.py compares them), little-endian.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from .model import INTERFACE, OBJECT_PATH, SIGNALS

_SIGNAL, _PROTOCOL_VERSION = 4, 1
_U32 = struct.Struct("<I")
_LENGTH_SERIAL = struct.Struct("<II")
_DOUBLE = struct.Struct("<d")
_PATH, _INTERFACE, _MEMBER, _SIGNATURE = 1, 2, 3, 8  # header field codes
_PADS = [b"\0" * n for n in range(8)]


def _pad(length: int, alignment: int) -> bytes:
    return _PADS[-length % alignment]


def _string(value: str) -> bytes:
    data = value.encode("utf-8")
    return _U32.pack(len(data)) + data + b"\0"


def _header(member: str, signature: str) -> tuple[bytes, bytes]:
    """The constant parts of a signal's header: the 4 bytes before the body length and serial, and the
    header fields array with the padding that ends the header."""
    buf = bytearray(16)  # endianness, type, flags, version, body length, serial, then the fields' length
    for code, kind, value in ((_PATH, "o", OBJECT_PATH), (_INTERFACE, "s", INTERFACE), (_MEMBER, "s", member),
                              (_SIGNATURE, "g", signature)):
        buf += _pad(len(buf), 8)  # each field is a struct (yv), 8-aligned
        buf += bytes((code, 1)) + kind.encode() + b"\0"  # the code, then the variant's one-letter signature
        if kind == "g":
            buf += bytes((len(signature),)) + signature.encode() + b"\0"
        else:
            buf += _pad(len(buf), 4) + _string(value)
    buf[12:16] = _U32.pack(len(buf) - 16)  # the array's length: its first element starts aligned, at 16
    buf += _pad(len(buf), 8)  # the body starts 8-aligned
    return b"l" + bytes((_SIGNAL, 0, _PROTOCOL_VERSION)), bytes(buf[12:])


_HEADERS = {member: _header(member, signature) for member, signature in SIGNALS.items()}
for _signature in SIGNALS.values():
    if set(_signature) - {"s", "d"}:
        raise ValueError(f"wire: signature {_signature!r} has a type this module does not marshal")


# A clean string → its marshalled form (u32 length, UTF-8, NUL). A run's id, its workflow's and steps' ids and
# the statuses recur in every signal of the run, so most strings are marshalled once; bounded, and only short
# strings are kept (file paths, which rarely recur, are not).
_PIECES: dict[str, bytes] = {}
_PIECES_MAX = 4096
_PIECE_MAX_LEN = 128


def _piece(text: str) -> bytes:
    data = text.encode("utf-8")
    piece = _U32.pack(len(data)) + data + b"\0"
    if len(data) <= _PIECE_MAX_LEN:
        if len(_PIECES) >= _PIECES_MAX:
            _PIECES.clear()
        _PIECES[text] = piece
    return piece


def body(signature: str, args: Sequence[str | float]) -> bytes:
    """The marshalled body of `args` for a signature of strings (`s`) and doubles (`d`). Strings must be
    valid D-Bus strings already (model.clean_str)."""
    if len(signature) != len(args):
        raise ValueError(f"wire: {len(args)} arguments for signature {signature!r}")
    out = b""
    cached = _PIECES.get
    for code, value in zip(signature, args):
        if code == "s":
            out += _PADS[-len(out) % 4] + (cached(value) or _piece(value))  # type: ignore[arg-type]
        else:
            out += _PADS[-len(out) % 8] + _DOUBLE.pack(value)
    return out


def signal_message(member: str, args: Sequence[str | float], serial: int) -> bytes:
    """One whole signal message of ours (`member` of model.SIGNALS) with the connection's next `serial`."""
    start, fields = _HEADERS[member]
    payload = body(SIGNALS[member], args)
    return start + _LENGTH_SERIAL.pack(len(payload), serial) + fields + payload


__all__ = ["body", "signal_message"]
