"""The socket API server: accepts connections, reads frames, checks who may call what, dispatches.

Life of a connection: the kernel's peer credentials decide its `Access` once; then request frames are read
one at a time (the idle timeout applies between them) and answered in order. A frame that breaks the
protocol gets a `bad_frame` reply when the connection can still carry one, and the connection is closed;
nothing a client sends can stop the server or disturb its other clients. A `subscribe` call turns the
connection into an event stream fed from a bounded hub subscription (a slow reader loses events and gets a
`lagged` event; the daemon never waits for it). Its frames are the hub's, encoded once per event whatever the
number of subscribers, and what queued up since the last write goes out in one write.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

from sdd_client import protocol
from sdd_client.errors import ErrorCode, ProtocolError

from . import auth, listener
from .control import Control
from .errors import ApiError, Forbidden, UnknownMethod
from .errors import ErrorCode as Code
from .methods import METHODS, Call, map_exception, subscribe_params
from .params import Params
from .refusals import RefusalAudit

log = logging.getLogger(__name__)

BACKLOG = 1024  # pending connections the kernel queues (capped by net.core.somaxconn)
SUBSCRIBER_QUEUE = 1000  # events a subscriber may fall behind before it gets `lagged`
# At most one write a millisecond to a subscriber: a burst's events share one write (and the client's read),
# an event after a quiet spell goes out at once. While a burst goes on (the last write carried
# SUBSCRIBER_BURST_EVENTS or more), one write per SUBSCRIBER_BURST_WINDOW: the daemon wakes the subscriber's
# task a fifth as often, and a paced 1,000 detections/s (about 15 events a millisecond) keeps the short window.
SUBSCRIBER_WINDOW = 0.001
SUBSCRIBER_BURST_WINDOW = 0.005
SUBSCRIBER_BURST_EVENTS = 128
WRITE_BUFFER_HIGH = 64 * 1024  # bytes queued to a slow client before drain() waits (then the hub drops)
# Connections an unlimited uid (root) may open beyond api.max_connections: however many clients others
# hold, the administrator can still reach the daemon to see and stop what is going on.
RESERVED_FOR_ROOT = 8


@dataclass(eq=False)
class Connection:
    peer: auth.Peer
    access: auth.Access
    writer: asyncio.StreamWriter
    subscribed: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class ApiServer:
    """The daemon's socket API. `await start()` binds (or inherits) the socket; `await close()` undoes it."""

    def __init__(self, daemon: Control, *, listen_fd: int | None = None, lock_fd: int | None = None) -> None:
        self.daemon = daemon
        self.config = daemon.config
        api = self.config.api
        self.max_connections: int = api.max_connections
        self.max_connections_per_uid: int = api.max_connections_per_uid
        self.unlimited_uids: frozenset[int] = frozenset({0})  # not held to the per-uid cap; may use the reserve
        self.idle_timeout: float = api.idle_timeout
        self.policy = auth.Policy.from_config(api.socket_group, api.read_groups, self.config.user_mode)
        self._listen_fd = listen_fd
        self._lock_fd = lock_fd  # the socket's lock when the daemon took it first; the listener keeps it
        self._listener: listener.Listener | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[Connection] = set()
        self._per_uid: dict[int, int] = {}
        self._closing = False
        self.refusals = RefusalAudit(lambda: getattr(self.daemon, "store", None))
        self.validating = asyncio.Lock()  # workflows.validate: one at a time, in a thread (methods.py)

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        fd = self._listen_fd
        if fd is None:
            from sdd import sdnotify  # socket activation: systemd hands over fd 3

            fds = sdnotify.listen_fds(unset=True)
            fd = fds[0] if fds else None
        if fd is not None:
            self._listener = listener.inherited(fd)
            where = f"inherited fd {fd}"
        else:
            api = self.config.api
            self._listener = listener.bind(self.config.paths.socket, api.socket_mode, api.socket_group or None,
                                           quiet=self.config.user_mode, lock_fd=self._lock_fd)
            where = str(self.config.paths.socket)
        # backlog: asyncio calls listen() again on the socket; keep room for bursts of clients connecting.
        self._server = await asyncio.start_unix_server(self._accept, sock=self._listener.sock, backlog=BACKLOG,
                                                       limit=protocol.MAX_FRAME + protocol.HEADER_SIZE)
        log.info("API listening on %s", where)

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for conn in tuple(self._connections):
            if conn.task is not None:
                conn.task.cancel()
        tasks = [c.task for c in self._connections if c.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.refusals.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._server = None

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def subscriber_count(self) -> int:
        return sum(1 for c in self._connections if c.subscribed)

    # -- connections ---------------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock: socket.socket = writer.get_extra_info("socket")
        try:
            peer = auth.peer_of(sock)
        except OSError as exc:
            log.warning("API: cannot read peer credentials: %s", exc)
            await _close(writer)
            return
        refusal = self._refusal(peer.uid)
        if refusal is not None:
            await self._send_and_close(writer, protocol.error_reply(protocol.NO_ID, ErrorCode.BUSY, refusal))
            return
        writer.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        conn = Connection(peer, self.policy.access(peer), writer, task=asyncio.current_task())  # type: ignore[arg-type]
        self._connections.add(conn)
        self._per_uid[peer.uid] = self._per_uid.get(peer.uid, 0) + 1
        try:
            await self._serve(conn, reader)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError):
            pass  # the client went away mid-reply
        except Exception:  # a bug here must cost one connection, never the server
            log.exception("API: connection from uid %d failed", peer.uid)
        finally:
            self._connections.discard(conn)
            left = self._per_uid.pop(peer.uid, 1) - 1
            if left > 0:
                self._per_uid[peer.uid] = left
            await _close(writer)

    def _refusal(self, uid: int) -> str | None:
        """Why a new connection from `uid` is refused (`busy`), or None."""
        if self._closing:
            return "sdd is stopping; try again later"
        unlimited = uid in self.unlimited_uids
        limit = self.max_connections + (RESERVED_FOR_ROOT if unlimited else 0)
        if len(self._connections) >= limit:
            return f"too many connections (api.max_connections = {self.max_connections}); try again later"
        if not unlimited and self._per_uid.get(uid, 0) >= self.max_connections_per_uid:
            return (f"too many connections from uid {uid} (api.max_connections_per_uid = "
                    f"{self.max_connections_per_uid}); close some or try again later")
        return None

    async def _serve(self, conn: Connection, reader: asyncio.StreamReader) -> None:
        writer = conn.writer
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    message = await protocol.read_message(reader)
            except TimeoutError:
                log.debug("API: closing idle connection of uid %d", conn.peer.uid)
                return
            except ProtocolError as exc:
                await self._send_and_close(writer, protocol.error_reply(protocol.NO_ID, exc.code, str(exc)))
                return
            if message is None:
                return
            try:
                request = protocol.parse_request(message)
            except ProtocolError as exc:
                rid = protocol.request_id(message)
                await self._send_and_close(writer, protocol.error_reply(rid, exc.code, str(exc)))
                return
            if request.method == "subscribe":
                await self._subscribe(conn, request, reader)
                return
            reply = await self.dispatch(conn, request)
            try:
                frame = protocol.encode(reply)
            except ProtocolError as exc:
                frame = protocol.encode(protocol.error_reply(
                    request.id, ErrorCode.INTERNAL, f"{request.method}: reply too large ({exc}); ask for less"))
            except (TypeError, ValueError, OverflowError) as exc:
                log.error("API: %s returned a result that cannot be encoded: %s", request.method, exc)
                frame = protocol.encode(protocol.error_reply(
                    request.id, ErrorCode.INTERNAL, f"{request.method}: internal error (unencodable result)"))
            writer.write(frame)
            try:
                # A client that sends requests but never reads replies is idle too.
                async with asyncio.timeout(self.idle_timeout):
                    await writer.drain()
            except TimeoutError:
                log.debug("API: closing connection of uid %d: replies not read", conn.peer.uid)
                return
            if "error" in reply and reply["error"]["code"] == ErrorCode.UNKNOWN_METHOD:
                return  # unknown methods count as malformed: answer, then hang up

    async def dispatch(self, conn: Connection, request: protocol.Request) -> dict[str, Any]:
        """One request in, one reply map out (never raises)."""
        method = request.method
        handler = METHODS.get(method)
        call = Call(self.daemon, self, conn.peer, conn.access, method)
        try:
            if handler is None:
                raise UnknownMethod(f"unknown method {method[:80]!r}")
            if not auth.allowed(method, conn.access):
                raise Forbidden(f"{method} is not permitted for uid {conn.peer.uid} ({conn.access} access)")
            result = await handler(call, Params(method, request.params))
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
            error = map_exception(exc, method)
            if handler is not None and (method in auth.WRITE_METHODS or error.code == Code.FORBIDDEN):
                # Successful state changes are audited by the daemon's Control; refusals are recorded here.
                await self._audit_refusal(conn, method, error, request.params)
            return protocol.error_reply(request.id, error.code, error.message)
        return protocol.result_reply(request.id, result)

    async def _subscribe(self, conn: Connection, request: protocol.Request, reader: asyncio.StreamReader) -> None:
        writer = conn.writer
        try:
            if not auth.allowed("subscribe", conn.access):
                raise Forbidden(f"subscribe is not permitted for uid {conn.peer.uid} ({conn.access} access)")
            events, maxsize = subscribe_params(Params("subscribe", request.params))
        except ApiError as exc:
            if exc.code == Code.FORBIDDEN:
                await self._audit_refusal(conn, "subscribe", exc, request.params)
            await self._send_and_close(writer, protocol.error_reply(request.id, exc.code, exc.message))
            return
        sub = self.daemon.hub.subscribe(maxsize=maxsize or SUBSCRIBER_QUEUE, events=events)
        conn.subscribed = True
        # The client says nothing more; anything it sends, or its EOF, ends the stream.
        watcher = asyncio.ensure_future(reader.read(1))
        watcher.add_done_callback(lambda _f: sub.close())
        try:
            writer.write(protocol.encode(protocol.result_reply(request.id, {"subscribed": True})))
            await writer.drain()
            window = SUBSCRIBER_WINDOW
            while (batch := await sub.batch(window)) is not None:
                if watcher.done():
                    return
                window = SUBSCRIBER_BURST_WINDOW if len(batch) >= SUBSCRIBER_BURST_EVENTS else SUBSCRIBER_WINDOW
                # What queued since the last write goes out in one write: each event's frame was encoded
                # once by the hub, and the same bytes go to every subscriber.
                frames = [frame for event in batch if (frame := event.frame()) is not None]
                if frames:
                    writer.write(b"".join(frames))
                    # Waits only for this client's socket buffer; the hub goes on (and counts what it drops).
                    await writer.drain()
        finally:
            sub.close()
            watcher.cancel()

    async def _audit_refusal(self, conn: Connection, method: str, error: ApiError, params: dict[str, Any]) -> None:
        target = next((str(params[k])[:256] for k in ("run_id", "workflow_id", "id")
                       if isinstance(params.get(k), (str, int))), None)
        await self.refusals.refused(conn.peer.uid, conn.peer.pid, method, f"refused:{error.code}", error.message,
                                    target)

    async def _send_and_close(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        try:
            writer.write(protocol.encode(reply))
            async with asyncio.timeout(1.0):
                await writer.drain()
        except (OSError, TimeoutError, ProtocolError):
            pass
        await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    """Closes a connection; what cannot be flushed within a second is dropped (close() alone would wait
    forever for a peer that does not read, and keep its socket open)."""
    writer.close()
    try:
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
    except (OSError, TimeoutError):
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise


__all__ = ["ApiServer", "Connection"]
