"""The executor's server: serves the `sdd` user only, one connection per daemon, requests multiplexed by id.

Every connection's peer is checked with SO_PEERCRED before a byte is read; anyone but `allowed_uid` gets
one `forbidden` error frame and the connection is closed. Every frame is bounded (`protocol.MAX_FRAME`,
`MAX_DEPTH`), every request parsed strictly (`parse_request`), and a bad frame closes the connection after
an error reply. The peer's pid (from the kernel, not from a request) joins the pids kill never signals.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sdd_client.errors import ProtocolError
from sdd_client.protocol import encode, read_message

from .abortable import Abort, Aborted
from .errors import Forbidden, PrimitiveError
from .policy import Policy
from .primitives import ASYNC, SYNC
from .protocol import (
    MAX_DEPTH,
    MAX_FRAME,
    MAX_INFLIGHT,
    Request,
    error_message,
    parse_request,
    wants_confirmation,
)

log = logging.getLogger("sdd.executor")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of a Unix socket's peer, as the kernel recorded them at connect."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


@dataclass(eq=False)
class _Control:
    """The daemon's answers for one request in flight: `go` (after `ready`) and `abort`."""

    go: asyncio.Future[bool]
    stop: Callable[[], None] = lambda: None
    aborted: bool = False
    silent: bool = False   # the daemon has nothing to check at `ready`: go on without asking


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    policy: Policy
    inflight: dict[int, _Control] = field(default_factory=dict)

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(message, MAX_FRAME))


class ExecutorServer:
    def __init__(self, policy: Policy, allowed_uid: int) -> None:
        self.policy = policy
        self.allowed_uid = allowed_uid
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, sock: socket.socket) -> None:
        """Serve a listening Unix socket (the unit's, or the one the supervisor made)."""
        self._server = await asyncio.start_unix_server(self.handle, sock=sock, limit=MAX_FRAME + 8)

    async def serve_connected(self, sock: socket.socket) -> None:
        """Serve one already connected socket (a socketpair) until it closes."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME + 8)
        await self.handle(reader, writer)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        pid, uid, _ = peer_credentials(sock)
        if uid != self.allowed_uid:
            log.warning("executor: refused a connection from uid %d (pid %d); only uid %d is served",
                        uid, pid, self.allowed_uid)
            writer.write(encode(error_message(0, "forbidden", f"executor: uid {uid} may not use the executor; "
                                              f"only uid {self.allowed_uid} may", False), MAX_FRAME))
            await _close(writer)
            return
        conn = _Connection(writer, self.policy.with_pids(pid))
        try:
            await self._read_loop(reader, conn)
        finally:
            for ctl in conn.inflight.values():
                ctl.stop()  # the daemon is gone: stop what has not passed its commit point
            await _close(writer)

    async def _read_loop(self, reader: asyncio.StreamReader, conn: _Connection) -> None:
        while True:
            try:
                msg = await read_message(reader, MAX_FRAME, MAX_DEPTH)
            except ProtocolError as exc:
                conn.send(error_message(0, "bad_frame", f"executor: {exc}", False))
                return
            except (ConnectionError, OSError):
                return
            if msg is None:
                return
            rid = msg.get("id")
            ctl = conn.inflight.get(rid) if isinstance(rid, int) and not isinstance(rid, bool) else None
            if ctl is not None and "op" not in msg:
                _answer(ctl, msg)
                continue
            try:
                rid, req = parse_request(msg)
            except PrimitiveError as exc:
                raw_id = msg.get("id")
                bad = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else 0
                conn.send(error_message(bad, exc.code, str(exc), False))
                continue
            if rid in conn.inflight:
                conn.send(error_message(rid, "invalid_params", f"executor: request {rid} is already in flight",
                                        False))
                continue
            if len(conn.inflight) >= MAX_INFLIGHT:
                conn.send(error_message(rid, "busy", "executor: too many requests in flight", True))
                continue
            loop = asyncio.get_running_loop()
            ctl = conn.inflight[rid] = _Control(loop.create_future())
            if not wants_confirmation(msg):
                ctl.go.set_result(True)
                ctl.silent = True
            task = asyncio.create_task(self._run(conn, rid, req, ctl))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, conn: _Connection, rid: int, req: Request, ctl: _Control) -> None:
        loop = asyncio.get_running_loop()
        abort = Abort()

        async def ask() -> None:
            if not ctl.silent:
                conn.send({"id": rid, "ready": True})
            if not await ctl.go:
                raise Aborted("the daemon did not go ahead")

        try:
            run_async = ASYNC.get(type(req))
            if run_async is not None:
                task = asyncio.ensure_future(run_async(conn.policy, req, ask))
                ctl.stop = lambda: None if task.cancel() else None  # noqa: RUF034 - cancel() returns a bool
                result = await task
            else:
                def before_act() -> None:
                    if ctl.silent and not ctl.aborted:
                        return
                    asyncio.run_coroutine_threadsafe(ask(), loop).result()

                def stop() -> None:
                    abort.request()
                    if not ctl.go.done():
                        ctl.go.set_result(False)
                ctl.stop = stop
                result = await asyncio.to_thread(SYNC[type(req)], conn.policy, req, before_act, abort)
            conn.send({"id": rid, "result": result})
        except (Aborted, asyncio.CancelledError):
            conn.send({"id": rid, "aborted": True})
        except PrimitiveError as exc:
            conn.send(error_message(rid, exc.code, str(exc), exc.retryable, exc.details, abort.committed))
        except Exception as exc:
            log.exception("executor: %s failed", req.op)
            conn.send(error_message(rid, "failed", f"{req.op}: {type(exc).__name__}: {exc}", True, None,
                                    abort.committed))
        finally:
            conn.inflight.pop(rid, None)


def _answer(ctl: _Control, msg: dict[str, Any]) -> None:
    if msg.get("abort") is True:
        ctl.aborted = True
        ctl.stop()
    elif isinstance(msg.get("go"), bool) and not ctl.go.done():
        ctl.go.set_result(msg["go"])


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


__all__ = ["ExecutorServer", "Forbidden", "peer_credentials"]
