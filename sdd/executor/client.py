"""The daemon's end of the boundary: `SocketExecutor`, the `Executor` that sends requests to the root side.

One connection, requests multiplexed by id, one reader task routing replies. A lost connection (the
executor crashed, was killed or restarted) fails every request in flight with `Unavailable`, which is
retryable: the engine tries the step again, the primitives are idempotent (a quarantine has a deterministic
id, a delete of an absent file is done, a kill of a gone process is done), and the next call reconnects.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable
from typing import Any

from sdd_client.errors import ProtocolError
from sdd_client.protocol import encode, read_message

from .abortable import Outcome
from .errors import PrimitiveError, Unavailable, from_wire
from .protocol import MAX_FRAME, MAX_INFLIGHT, Request, idempotent, request_message
from .seam import nothing

_LOST: dict[str, Any] = {"lost": True}


class SocketExecutor:
    def __init__(self, path: str | None = None, *, sock: socket.socket | None = None,
                 connect_timeout: float = 5.0) -> None:
        self.path = path
        self._sock = sock
        self.connect_timeout = connect_timeout
        self._ids = itertools.count(1)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._lock = asyncio.Lock()
        # The executor refuses requests beyond MAX_INFLIGHT on a connection (`busy`): wait for a place instead.
        # With engine.max_concurrent_runs raised to 64 for outbreaks, the quarantines and the scans at once
        # (each in flight for its whole length) could pass it, and a refused quarantine failed its attempt.
        self._places = asyncio.Semaphore(MAX_INFLIGHT)

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            try:
                if self._sock is not None:
                    sock, self._sock = self._sock, None
                    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME + 8)
                elif self.path is not None:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_unix_connection(self.path, limit=MAX_FRAME + 8), self.connect_timeout)
                else:
                    raise Unavailable("executor: the connection is gone and there is no socket to reconnect to")
            except (OSError, TimeoutError) as exc:
                raise Unavailable(f"executor unreachable at {self.path}: {exc}") from exc
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read(reader))
            return writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                msg = await read_message(reader, MAX_FRAME)
                if msg is None:
                    break
                rid = msg.get("id")
                queue = self._pending.get(rid) if isinstance(rid, int) else None
                if queue is not None:
                    queue.put_nowait(msg)
                elif "error" in msg:
                    # Addressed to no request (id 0): the executor refused the connection or a frame.
                    for q in self._pending.values():
                        q.put_nowait({**msg, "id": 0})
        except (ProtocolError, ConnectionError, OSError):
            pass
        finally:
            if self._writer is not None:
                self._writer.close()
            self._writer = None
            for q in self._pending.values():
                q.put_nowait(_LOST)

    def _send(self, writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
        if not writer.is_closing():
            writer.write(encode(message, MAX_FRAME))

    async def call(self, req: Request, before_act: Callable[[], None] = nothing) -> Outcome[dict[str, Any]]:
        async with self._places:
            return await self._call(req, before_act)

    async def _call(self, req: Request, before_act: Callable[[], None]) -> Outcome[dict[str, Any]]:
        writer = await self._connect()
        rid = next(self._ids)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending[rid] = queue
        cancelled = False
        refusal: BaseException | None = None
        try:
            self._send(writer, request_message(rid, req, confirm=before_act is not nothing))
            while True:
                try:
                    msg = await queue.get()
                except asyncio.CancelledError:
                    if cancelled:
                        raise
                    cancelled = True
                    self._send(writer, {"id": rid, "abort": True})
                    continue
                if msg is _LOST:
                    if not idempotent(req):
                        # It may have run: never again by itself (the contract's rule for a step found in flight).
                        raise PrimitiveError(f"executor: the connection was lost during {req.op}; its outcome is "
                                             f"unknown and it is not idempotent, so it is not tried again",
                                             retryable=False)
                    raise Unavailable(f"executor: the connection was lost during {req.op}; its outcome is "
                                      f"unknown, and another attempt will find it done or do it")
                if msg.get("ready") is True:
                    try:
                        before_act()
                    except Exception as exc:  # noqa: BLE001 - the daemon's own refusal (a rate limit) wins
                        refusal = exc
                        self._send(writer, {"id": rid, "go": False})
                        continue
                    self._send(writer, {"id": rid, "go": True})
                    continue
                if "result" in msg and isinstance(msg["result"], dict):
                    return Outcome(msg["result"], cancelled)
                if msg.get("aborted") is True:
                    if refusal is not None:
                        raise refusal
                    raise asyncio.CancelledError
                err = msg.get("error")
                if isinstance(err, dict):
                    failure = from_wire(str(err.get("code")), str(err.get("message")), bool(err.get("retryable")),
                                        err.get("details") if isinstance(err.get("details"), dict) else None)
                    if refusal is not None:
                        raise refusal from failure
                    if cancelled and not err.get("committed"):
                        raise asyncio.CancelledError from failure
                    raise failure
                raise PrimitiveError(f"executor: unexpected reply to {req.op}")
        finally:
            self._pending.pop(rid, None)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            try:
                await self._reader_task
            except asyncio.CancelledError:
                pass
