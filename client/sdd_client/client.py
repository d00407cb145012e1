"""The sdd client library: find the daemon's socket, call methods, follow events. Sync and async.

    with Client() as sdd:
        print(sdd.call("status")["state"])
        for event in sdd.subscribe():
            print(event.name, event.data)

`AsyncClient` offers the same with `await`/`async for`. Error replies raise `ApiError(code, message)`;
a daemon that cannot be reached raises `DaemonUnreachable` naming the socket.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import select
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from . import protocol
from .errors import ApiError, DaemonUnreachable, MalformedFrame, ProtocolError, TruncatedFrame

SYSTEM_SOCKET = Path("/run/sdd/sdd.sock")
DEFAULT_TIMEOUT = 60.0
READ_CHUNK = 256 * 1024  # bytes an event stream reads at a time


def user_socket() -> Path:
    """Where `sdd --user` listens: $XDG_RUNTIME_DIR/sdd/sdd.sock, else /tmp/sdd-UID/sdd.sock."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "sdd" / "sdd.sock"
    return Path(f"/tmp/sdd-{os.getuid()}") / "sdd.sock"


def checkout_socket(package: Path | None = None) -> Path | None:
    """`run/sdd.sock` of the source checkout this client was installed from in editable mode (as `make venv`
    does), where `make run` puts its daemon's socket; None for an installed client, or when that socket is
    not there or not this user's (or root's): a socket in someone else's directory is not one to trust."""
    package = package or Path(__file__).resolve().parent          # CHECKOUT/client/sdd_client
    checkout = package.parent.parent
    if package.parent.name != "client" or not (checkout / "Makefile").is_file():
        return None
    path = checkout / "run" / "sdd.sock"
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid not in (0, os.geteuid()):
        return None
    return path


def resolve_socket(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`--socket`, else $SDD_SOCKET, else the system socket if it exists, else the user socket if it
    exists, else the socket of `make run` in the checkout this client runs from (see `checkout_socket`),
    else the system path (so the error names the socket a root daemon would use)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("SDD_SOCKET")
    if env:
        return Path(env)
    if SYSTEM_SOCKET.exists():
        return SYSTEM_SOCKET
    user = user_socket()
    if user.exists():
        return user
    return checkout_socket() or SYSTEM_SOCKET


@dataclass(frozen=True)
class Event:
    """One message of a subscription: `name` is the hub event (`run.finished`, `lagged`, ...)."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)


def _unwrap(reply: Mapping[str, Any], rid: int) -> Any:
    """The result of a reply to request rid, or ApiError."""
    if reply.get("id") != rid:
        error = reply.get("error")
        if isinstance(error, dict) and reply.get("id") == protocol.NO_ID:
            raise ApiError(str(error.get("code", "bad_frame")), str(error.get("message", "")))
        raise MalformedFrame(f"reply id {reply.get('id')!r} does not match request id {rid}")
    if "error" in reply:
        error = reply["error"]
        if not isinstance(error, dict):
            raise MalformedFrame("reply field 'error' must be a map")
        raise ApiError(str(error.get("code", "internal")), str(error.get("message", "")))
    if "result" not in reply:
        raise MalformedFrame("reply has neither 'result' nor 'error'")
    return reply["result"]


def _closed_by_peer(sock: socket.socket) -> bool:
    """True when the daemon has closed this connection (EOF is readable). Never blocks: a socket with a
    timeout would turn a non-blocking recv into a wait, so readability is polled first."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _subscribe_params(events: list[str] | None, queue: int | None) -> dict[str, Any]:
    """`events`: only these names (default all); `queue`: events the daemon keeps for us before `lagged`."""
    params: dict[str, Any] = {}
    if events:
        params["events"] = list(events)
    if queue is not None:
        params["queue"] = queue
    return params


def _event(message: Mapping[str, Any]) -> Event:
    name = message.get("event")
    data = message.get("data", {})
    if not isinstance(name, str) or not isinstance(data, dict):
        if "error" in message and isinstance(message["error"], dict):
            err = message["error"]
            raise ApiError(str(err.get("code", "internal")), str(err.get("message", "")))
        raise MalformedFrame("an event must be {'event': str, 'data': map}")
    return Event(name, data)


class Client:
    """A blocking client on one connection. Not thread-safe: one call at a time."""

    def __init__(self, socket_path: str | os.PathLike[str] | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.socket_path = resolve_socket(socket_path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)

    def connect(self) -> Self:
        if self._sock is None:
            self._sock = self._open()
        return self

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(os.fspath(self.socket_path))
        except OSError as exc:
            sock.close()
            raise DaemonUnreachable(str(self.socket_path), exc.strerror or str(exc)) from None
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, /, **params: Any) -> Any:
        """Calls one method and returns its result; ApiError on an error reply."""
        return self.call_params(method, params)

    def call_params(self, method: str, params: Mapping[str, Any]) -> Any:
        if self._sock is not None and _closed_by_peer(self._sock):
            self.close()  # the daemon dropped the idle connection (or restarted): a new one, before sending
        sock = self.connect()._sock
        assert sock is not None
        rid = next(self._ids)
        try:
            protocol.send_message(sock, protocol.request(rid, method, params))
            reply = protocol.recv_message(sock, max_depth=protocol.REPLY_MAX_DEPTH)
        except ProtocolError:
            self.close()
            raise
        except (TimeoutError, OSError) as exc:
            self.close()
            reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
            raise DaemonUnreachable(str(self.socket_path), reason) from None
        if reply is None:
            self.close()
            raise DaemonUnreachable(str(self.socket_path), "connection closed by the daemon")
        return _unwrap(reply, rid)

    def subscribe(self, events: list[str] | None = None, queue: int | None = None) -> EventStream:
        """Opens a subscription on a connection of its own. The daemon has acknowledged it when this
        returns, so nothing published afterwards is missed. Iterate it; close it (or use `with`) when done."""
        return EventStream(self._open(), str(self.socket_path), _subscribe_params(events, queue))


class EventStream:
    """Live events from a blocking connection (see `Client.subscribe`)."""

    def __init__(self, sock: socket.socket, where: str, params: dict[str, Any]) -> None:
        self._sock = sock
        self._where = where
        try:
            protocol.send_message(sock, protocol.request(1, "subscribe", params))
            first = protocol.recv_message(sock, max_depth=protocol.REPLY_MAX_DEPTH)
            if first is None:
                raise DaemonUnreachable(where, "connection closed by the daemon")
            _unwrap(first, 1)
        except OSError as exc:
            sock.close()
            raise DaemonUnreachable(where, exc.strerror or str(exc)) from None
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)  # events may be minutes apart
        self._frames = protocol.FrameBuffer()

    def fileno(self) -> int:
        return self._sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        """Bounds how long `next()` waits; on expiry it raises TimeoutError (the stream stays usable)."""
        self._sock.settimeout(timeout)

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        # Events come in bursts: one recv takes many frames, which are then handed out from the buffer.
        while True:
            payload = self._frames.payload()
            if payload is not None:
                return _event(protocol.decode(payload, max_depth=protocol.REPLY_MAX_DEPTH))
            try:
                chunk = self._sock.recv(READ_CHUNK)
            except TimeoutError:
                raise TimeoutError("no event in time") from None
            except OSError as exc:
                raise DaemonUnreachable(self._where, exc.strerror or str(exc)) from None
            if not chunk:
                if self._frames.pending:
                    raise TruncatedFrame(f"connection closed inside a frame ({self._frames.pending} bytes)")
                raise StopIteration
            self._frames.feed(chunk)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """An asyncio client on one connection; calls are serialised by a lock."""

    def __init__(self, socket_path: str | os.PathLike[str] | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.socket_path = resolve_socket(socket_path)
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(
                asyncio.open_unix_connection(os.fspath(self.socket_path), limit=protocol.MAX_FRAME + 8),
                self.timeout)
        except TimeoutError:
            raise DaemonUnreachable(str(self.socket_path), "timed out") from None
        except OSError as exc:
            raise DaemonUnreachable(str(self.socket_path), exc.strerror or str(exc)) from None

    async def connect(self) -> Self:
        if self._writer is None:
            self._reader, self._writer = await self._open()
        return self

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        await _close_writer(writer)

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, method: str, /, **params: Any) -> Any:
        return await self.call_params(method, params)

    async def call_params(self, method: str, params: Mapping[str, Any]) -> Any:
        async with self._lock:
            if self._reader is not None and self._reader.at_eof():
                await self.close()  # dropped while idle: reconnect before sending, never after
            await self.connect()
            assert self._reader is not None and self._writer is not None
            rid = next(self._ids)
            try:
                await protocol.write_message(self._writer, protocol.request(rid, method, params))
                reply = await asyncio.wait_for(
                    protocol.read_message(self._reader, max_depth=protocol.REPLY_MAX_DEPTH), self.timeout)
            except ProtocolError:
                await self.close()
                raise
            except TimeoutError:
                await self.close()
                raise DaemonUnreachable(str(self.socket_path), "timed out") from None
            except OSError as exc:
                await self.close()
                raise DaemonUnreachable(str(self.socket_path), exc.strerror or str(exc)) from None
            if reply is None:
                await self.close()
                raise DaemonUnreachable(str(self.socket_path), "connection closed by the daemon")
            return _unwrap(reply, rid)

    def subscribe(self, events: list[str] | None = None, queue: int | None = None) -> AsyncEventStream:
        """A subscription on a connection of its own: `async with client.subscribe() as events:` (the
        daemon has acknowledged it once the `async with` body runs), or directly `async for`."""
        return AsyncEventStream(self, _subscribe_params(events, queue))


class AsyncEventStream:
    """Live events on an asyncio connection (see `AsyncClient.subscribe`)."""

    def __init__(self, client: AsyncClient, params: dict[str, Any]) -> None:
        self._client = client
        self._params = params
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> Self:
        if self._reader is not None:
            return self
        where = str(self._client.socket_path)
        reader, writer = await self._client._open()
        try:
            await protocol.write_message(writer, protocol.request(1, "subscribe", self._params))
            first = await protocol.read_message(reader, max_depth=protocol.REPLY_MAX_DEPTH)
            if first is None:
                raise DaemonUnreachable(where, "connection closed by the daemon")
            _unwrap(first, 1)
        except OSError as exc:
            writer.close()
            raise DaemonUnreachable(where, exc.strerror or str(exc)) from None
        except BaseException:
            writer.close()
            raise
        self._reader, self._writer = reader, writer
        return self

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> Event:
        await self.open()
        assert self._reader is not None
        try:
            message = await protocol.read_message(self._reader, max_depth=protocol.REPLY_MAX_DEPTH)
        except OSError as exc:
            raise DaemonUnreachable(str(self._client.socket_path), exc.strerror or str(exc)) from None
        if message is None:
            raise StopAsyncIteration
        return _event(message)

    async def aclose(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        await _close_writer(writer)

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


__all__ = ["SYSTEM_SOCKET", "AsyncClient", "AsyncEventStream", "Client", "Event", "EventStream", "resolve_socket", "user_socket"]


async def _close_writer(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass  # the daemon already went away: closed is closed
