"""The sdd socket wire protocol, shared by the daemon and every client.

A message is a 4-byte big-endian length followed by one msgpack map of at most 1 MiB. Requests are
`{"id": int, "method": str, "params": map}`; replies `{"id": int, "result": any}` or
`{"id": int, "error": {"code": str, "message": str}}`; a subscription streams `{"event": str, "data": map}`.

Everything that arrives is hostile: msgpack is unpacked with explicit limits on every length, map keys must
be strings, and nesting deeper than `MAX_DEPTH` is refused. The pure functions (`encode`, `decode`,
`parse_request`, ...) do the deciding; the small read/write helpers at the bottom only move bytes.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import struct
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import PurePath
from typing import Any

import msgpack

from .errors import ErrorCode, FrameTooLarge, MalformedFrame, ProtocolError, TruncatedFrame

MAX_FRAME = 1024 * 1024  # bytes of msgpack payload, the length prefix not counted
MAX_DEPTH = 32  # nested maps/arrays a request may hold; real requests are 3 deep
REPLY_MAX_DEPTH = 128  # replies may carry stored detections and step results, which nest deeper
HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
NO_ID = 0  # the id of an error reply to a frame whose own id could not be read


@dataclass(frozen=True)
class Request:
    id: int
    method: str
    params: dict[str, Any]


# -- pure encoding and decoding --------------------------------------------------------------------------


def _default(value: Any) -> Any:
    """Turns the few non-msgpack types that daemon results carry into plain data."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__} for the socket API")


_packer_options = {"use_bin_type": True, "default": _default, "datetime": False}


_packers = threading.local()  # one reusable Packer per thread: packb() builds a new one on every call


def new_packer() -> msgpack.Packer:
    """A Packer with the protocol's options (for one thread: a Packer is not thread-safe)."""
    return msgpack.Packer(**_packer_options)


def _packer() -> msgpack.Packer:
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = new_packer()
    return packer


def pack_payload(message: Mapping[str, Any]) -> bytes:
    """The msgpack bytes of one message (no length prefix)."""
    try:
        return _packer().pack(message)
    except BaseException as exc:
        _packers.packer = None  # whatever it holds of the failed message is not reused
        if not isinstance(exc, UnicodeEncodeError):
            raise
        # A file name that is not UTF-8 lives in the daemon as surrogateescape'd text (U+DC80..U+DCFF);
        # msgpack strings are UTF-8, so on the wire its bytes are shown escaped (`\udcff`), as on D-Bus.
        return msgpack.packb(_escape_surrogates(message), **_packer_options)


def _escape_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, Mapping):
        return {_escape_surrogates(k): _escape_surrogates(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escape_surrogates(v) for v in value]
    return value


def encode(message: Mapping[str, Any], max_size: int = MAX_FRAME) -> bytes:
    """One frame: length prefix + msgpack map. Raises FrameTooLarge when the payload exceeds max_size."""
    if not isinstance(message, Mapping):
        raise MalformedFrame(f"a message must be a map, got {type(message).__name__}")
    payload = pack_payload(message)
    if len(payload) > max_size:
        raise FrameTooLarge(f"message of {len(payload)} bytes exceeds the {max_size}-byte limit")
    return HEADER.pack(len(payload)) + payload


def frame_length(header: bytes, max_size: int = MAX_FRAME) -> int:
    """The payload length announced by a 4-byte header, refusing 0 and anything over max_size."""
    if len(header) != HEADER_SIZE:
        raise TruncatedFrame(f"length prefix is {len(header)} bytes, expected {HEADER_SIZE}")
    (length,) = HEADER.unpack(header)
    if length > max_size:
        raise FrameTooLarge(f"frame of {length} bytes exceeds the {max_size}-byte limit")
    if length == 0:
        raise MalformedFrame("empty frame: a message must be one msgpack map")
    return length


class FrameBuffer:
    """Whole frames out of a byte stream that arrives in chunks: events come in bursts, so one read can carry
    many frames, which are then handed out from the buffer (one chunk copied once, not once per frame)."""

    __slots__ = ("_buf", "_pos", "max_size")

    def __init__(self, max_size: int = MAX_FRAME) -> None:
        self.max_size = max_size
        self._buf = b""  # bytes received and not yet handed out, from self._pos on
        self._pos = 0

    def feed(self, chunk: bytes) -> None:
        self._buf = self._buf[self._pos:] + chunk if self._pos < len(self._buf) else chunk
        self._pos = 0

    @property
    def pending(self) -> int:
        """Bytes of a frame not yet whole."""
        return len(self._buf) - self._pos

    def payload(self) -> bytes | None:
        """The next whole frame's payload, or None when more bytes are needed; ProtocolError on a bad prefix."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        start = pos + HEADER_SIZE
        end = start + frame_length(buf[pos:start], self.max_size)
        if len(buf) < end:
            return None
        self._pos = end
        return buf[start:end]


def decode(payload: bytes, max_size: int = MAX_FRAME, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """Unpacks one msgpack map from a frame's payload, within explicit limits."""
    if len(payload) > max_size:
        raise FrameTooLarge(f"frame of {len(payload)} bytes exceeds the {max_size}-byte limit")
    try:
        value = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
            # (unpackb takes no max_buffer_size: the frame length was checked above.)
            # No single item can be larger than the frame; counts are bounded by bytes (one byte each).
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=max_size,
            max_map_len=max_size // 2,
            max_ext_len=0,  # no extension types at all (timestamps included)
        )
    except msgpack.StackError:
        raise MalformedFrame(f"payload nests deeper than {max_depth} levels") from None
    except msgpack.ExtraData:
        raise MalformedFrame("payload holds more than one msgpack object") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # ValueError covers FormatError, unicode errors, limit errors and non-string map keys.
        raise MalformedFrame(f"payload is not valid msgpack: {str(exc) or type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise MalformedFrame(f"payload must be a msgpack map, got {type(value).__name__}")
    if len(payload) > max_depth:  # each level of nesting takes at least a byte: a short payload cannot be deep
        check_depth(value, max_depth)
    return value


def check_depth(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Refuses containers nested deeper than max_depth (iterative, so hostile input cannot blow the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise MalformedFrame(f"payload nests deeper than {max_depth} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))


def request_id(message: Mapping[str, Any]) -> int:
    """The message's id when it is a usable int, else NO_ID (for error replies to broken requests)."""
    value = message.get("id")
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**64:
        return value
    return NO_ID


def parse_request(message: Mapping[str, Any]) -> Request:
    """Checks the shape of a request map; raises MalformedFrame naming the bad field."""
    rid = message.get("id")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise MalformedFrame("request field 'id' must be an integer")
    method = message.get("method")
    if not isinstance(method, str) or not method:
        raise MalformedFrame("request field 'method' must be a non-empty string")
    params = message.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise MalformedFrame("request field 'params' must be a map")
    extra = set(message) - {"id", "method", "params"}
    if extra:
        raise MalformedFrame(f"unknown request field(s): {', '.join(sorted(map(str, extra)))}")
    return Request(rid, method, params)


def request(rid: int, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"id": rid, "method": method, "params": dict(params or {})}


def result_reply(rid: int, result: Any) -> dict[str, Any]:
    return {"id": rid, "result": result}


def error_reply(rid: int, code: ErrorCode | str, message: str) -> dict[str, Any]:
    return {"id": rid, "error": {"code": str(code), "message": message}}


def event_message(event: str, data: Mapping[str, Any]) -> dict[str, Any]:
    return {"event": event, "data": dict(data)}


# -- async byte movers (asyncio streams) -------------------------------------------------------------------


async def read_message(reader: asyncio.StreamReader, max_size: int = MAX_FRAME,
                       max_depth: int = MAX_DEPTH) -> dict[str, Any] | None:
    """Reads one frame. None on a clean end of stream between frames; ProtocolError on anything else."""
    try:
        header = await reader.readexactly(HEADER_SIZE)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise TruncatedFrame("connection closed inside a length prefix") from None
    length = frame_length(header, max_size)
    try:
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise TruncatedFrame(f"connection closed after {len(exc.partial)} of {length} payload bytes") from None
    return decode(payload, max_size, max_depth)


async def write_message(writer: asyncio.StreamWriter, message: Mapping[str, Any],
                        max_size: int = MAX_FRAME) -> None:
    writer.write(encode(message, max_size))
    await writer.drain()


# -- blocking byte movers (plain sockets) ------------------------------------------------------------------


def _recv_exactly(sock: socket.socket, n: int, buf: bytearray) -> bool:
    """Fills buf with n bytes; False on EOF before the first byte, TruncatedFrame on EOF after it."""
    view = memoryview(buf)
    got = 0
    while got < n:
        count = sock.recv_into(view[got:], n - got)
        if count == 0:
            if got == 0:
                return False
            raise TruncatedFrame(f"connection closed after {got} of {n} bytes")
        got += count
    return True


def recv_message(sock: socket.socket, max_size: int = MAX_FRAME,
                 max_depth: int = MAX_DEPTH) -> dict[str, Any] | None:
    """Reads one frame from a blocking socket. None on a clean end of stream between frames."""
    header = bytearray(HEADER_SIZE)
    if not _recv_exactly(sock, HEADER_SIZE, header):
        return None
    length = frame_length(bytes(header), max_size)
    payload = bytearray(length)
    if not _recv_exactly(sock, length, payload):
        raise TruncatedFrame(f"connection closed before any of {length} payload bytes")
    return decode(bytes(payload), max_size, max_depth)


def send_message(sock: socket.socket, message: Mapping[str, Any], max_size: int = MAX_FRAME) -> None:
    sock.sendall(encode(message, max_size))


__all__ = [
    "HEADER_SIZE",
    "MAX_DEPTH",
    "MAX_FRAME",
    "NO_ID",
    "REPLY_MAX_DEPTH",
    "ErrorCode",
    "FrameTooLarge",
    "MalformedFrame",
    "ProtocolError",
    "Request",
    "TruncatedFrame",
    "check_depth",
    "decode",
    "encode",
    "error_reply",
    "event_message",
    "frame_length",
    "new_packer",
    "pack_payload",
    "parse_request",
    "read_message",
    "recv_message",
    "request",
    "request_id",
    "result_reply",
    "send_message",
    "write_message",
]
