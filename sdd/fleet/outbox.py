"""Delivering the outbox: one drain per sink, reading undelivered events in order and moving the sink's cursor
only once the sink has them (a JetStream ack, a written and fdatasync'd file).

A drain never slows intake: the history's writes only append to the outbox table (store/outbox.py); the drain
runs as its own task, wakes when the writer committed events (a wake-up coalesced across commits), and when its
sink is down it backs off and retries, while the outbox grows up to its bound. Delivery is at least once from
here; the NATS stream's duplicate window (`Nats-Msg-Id` = `metadata.uid`) and the file sink's check of its
last line make it exactly once at the far end across crashes.

Also here: the JSON-lines file sink (`[export] ocsf_file`), with size rotation (NAME → NAME.1 → … NAME.N).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from ..logging import kv

log = logging.getLogger("sdd.fleet")

Row = tuple[int, str, str, float]  # (seq, uid, event JSON, created_at) as the store hands them out


class SinkError(Exception):
    """The sink could not take a batch (nothing of it is counted delivered). `until`: an event set when the
    sink is worth trying again (a connection back up), so the retry does not wait out its back-off."""

    def __init__(self, message: str, *, until: asyncio.Event | None = None) -> None:
        super().__init__(message)
        self.until = until


class Sink(Protocol):
    name: str

    async def open(self) -> None: ...

    async def deliver(self, rows: Sequence[Row]) -> None: ...

    async def close(self) -> None: ...

    def info(self) -> dict[str, Any]: ...


class OutboxStore(Protocol):
    def outbox_pending(self, sink: str, limit: int = 500, after: int = 0) -> list[Row]: ...

    def outbox_mark_delivered(self, sink: str, seq: int) -> None: ...

    def flush(self) -> Awaitable[None]: ...


class Drain:
    """Moves one sink's events out of the outbox, in order, forever (until `stop()`)."""

    def __init__(self, store: OutboxStore, sink: Sink, *, batch: int = 1000, coalesce: float = 0.002,
                 backoff_initial: float = 0.5,
                 backoff_max: float = 15.0, on_delivered: Callable[[str, Sequence[Row]], None] | None = None) -> None:
        self.store = store
        self.sink = sink
        self.batch = batch
        self.coalesce = coalesce
        self._after = 0  # the last seq the sink has: its cursor in the database follows without being awaited
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.on_delivered = on_delivered
        self.state = "starting"
        self.last_error = ""
        self.delivered = 0
        self.failures = 0
        self._lags: deque[float] = deque(maxlen=4096)  # ms from an event's commit into the outbox to the sink
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_pending = threading.Event()  # coalesces wake-ups from the writer thread
        self._stopping = False
        self._open = False
        self._one = asyncio.Lock()

    def wake_threadsafe(self) -> None:
        """From any thread (the store's writer, after a commit that added events)."""
        loop = self._loop
        if loop is None or self._wake_pending.is_set():
            return
        self._wake_pending.set()
        try:
            loop.call_soon_threadsafe(self._woken)
        except RuntimeError:  # the loop is closed
            pass

    def _woken(self) -> None:
        self._wake_pending.clear()
        self._wake.set()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        delay = self.backoff_initial
        while not self._stopping:
            try:
                if not self._open:
                    await self.sink.open()
                    self._open = True
                    self.state = "up"
                    log.info("export sink connected", extra=kv(sink=self.sink.name, **self.sink.info()))
                moved = await self.drain_once()
                delay = self.backoff_initial
                if not moved:
                    await self._wake.wait()
                    # A commit wakes us; the next ones are close behind: one batch for them all.
                    await asyncio.sleep(self.coalesce)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 -- a sink's failure is retried, never fatal
                self.failures += 1
                message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, SinkError) else str(exc)
                if self.state != "down" or message != self.last_error:
                    log.warning("export sink unavailable; events wait in the outbox",
                                extra=kv(sink=self.sink.name, error=message, retry_in=round(delay, 2)))
                self.state, self.last_error = "down", message
                until = exc.until if isinstance(exc, SinkError) else None
                if until is not None:  # down until something says otherwise: retry as soon as it does
                    await self._sleep_until(until, self.backoff_max)
                    delay = self.backoff_initial
                else:
                    await self._sleep(delay)
                    delay = min(delay * 2, self.backoff_max)

    async def drain_once(self) -> int:
        """Deliver what is pending now; the number of events moved (0 when there was nothing). One at a time:
        the shutdown's last delivery must not send the batch the loop is sending."""
        async with self._one:
            return await self._drain_once()

    async def _drain_once(self) -> int:
        moved = 0
        while not self._stopping:
            self._wake.clear()  # before reading: a commit after this read wakes the next wait
            rows = self.store.outbox_pending(self.sink.name, self.batch, self._after)
            if not rows:
                return moved
            await self.sink.deliver(rows)
            now = time.time()
            self._lags.extend((now - r[3]) * 1000.0 for r in rows)
            # Not awaited: a crash before this commits sends the batch again, which the far end deduplicates.
            self._after = rows[-1][0]
            self.store.outbox_mark_delivered(self.sink.name, self._after)
            if self.state != "up":
                log.info("export sink delivering again", extra=kv(sink=self.sink.name))
                self.state = "up"
            self.delivered += len(rows)
            moved += len(rows)
            if self.on_delivered is not None:
                self.on_delivered(self.sink.name, rows)
        return moved

    async def _sleep(self, delay: float) -> None:
        try:
            await asyncio.wait_for(self._stopped_event(), delay)
        except TimeoutError:
            pass

    async def _sleep_until(self, event: asyncio.Event, timeout: float) -> None:
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stopped_event())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _stopped_event(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()

    async def flush(self, timeout: float) -> None:
        """One last delivery of what is pending (at shutdown), bounded by `timeout`."""
        if not self._open or self.state != "up":
            return
        try:
            await asyncio.wait_for(self.drain_once(), timeout)
            await self.store.flush()
        except Exception as exc:  # noqa: BLE001 -- what is left is delivered at the next start
            log.info("export sink: events left for the next start", extra=kv(sink=self.sink.name, error=exc))

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        await self._close_sink()

    async def _close_sink(self) -> None:
        if self._open:
            self._open = False
            try:
                await self.sink.close()
            except Exception as exc:  # noqa: BLE001
                log.debug("export sink close failed", extra=kv(sink=self.sink.name, error=exc))

    def lag_ms(self) -> dict[str, float | None]:
        """Outbox-to-sink lag of the last 4,096 events delivered: from the commit of an event into the outbox
        (its row's `created_at`) to the sink having it (ack, fdatasync); p50 / p99 / max in ms."""
        lags = sorted(self._lags)
        if not lags:
            return {"p50": None, "p99": None, "max": None}
        return {"p50": round(lags[len(lags) // 2], 2), "p99": round(lags[max(0, int(len(lags) * 0.99) - 1)], 2),
                "max": round(lags[-1], 2)}

    def info(self) -> dict[str, Any]:
        return {"state": self.state, "delivered": self.delivered, "failures": self.failures,
                "last_error": self.last_error, "lag_ms": self.lag_ms(), **self.sink.info()}


class DrainThread:
    """A drain on its own thread and event loop: a daemon busy with a burst (its loop taking turns with every
    run) does not hold back its exports, and a sink's client library never runs on the daemon's loop."""

    def __init__(self, drain: Drain) -> None:
        self.drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"sdd-export-{drain.sink.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        task = loop.create_task(self.drain.run())
        self._ready.set()
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("export drain stopped", extra=kv(sink=self.drain.sink.name))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def stop(self, flush_timeout: float) -> None:
        """One bounded last delivery, then the sink closes and the thread ends."""
        loop = self._loop
        if loop is None or not self._thread.is_alive():
            return

        async def finish() -> None:
            await self.drain.flush(flush_timeout)
            await self.drain.stop()
        try:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(finish(), loop))
        except Exception as exc:  # noqa: BLE001 -- what is left is delivered at the next start
            log.info("export sink did not stop cleanly", extra=kv(sink=self.drain.sink.name, error=exc))
        await asyncio.to_thread(self._thread.join, flush_timeout + 5)


class FileSink:
    """`[export] ocsf_file`: one OCSF event per line, appended; rotated by size (for Vector, Fluent Bit, Wazuh's
    `localfile`). A batch counts as delivered once written and fdatasync'd. At start the last line's
    `metadata.uid` is read back, so a batch written just before a crash is not written twice."""

    name = "file"

    def __init__(self, path: str, max_bytes: int, keep: int = 5) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._fd: int | None = None
        self._size = 0
        self._last_uid: str | None = None
        self.rotations = 0

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        parent = os.path.dirname(self.path)
        os.makedirs(parent, mode=0o750, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise SinkError(f"{self.path}: cannot open: {exc.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise SinkError(f"{self.path}: not a regular file")
        self._fd, self._size = fd, st.st_size
        self._last_uid = _last_uid(self.path, st.st_size)

    async def deliver(self, rows: Sequence[Row]) -> None:
        if self._last_uid is not None:
            uids = [r[1] for r in rows]
            if self._last_uid in uids:  # written before a crash, not yet counted delivered
                rows = rows[uids.index(self._last_uid) + 1:]
            self._last_uid = None
        if rows:
            await asyncio.to_thread(self._write, "".join(r[2] + "\n" for r in rows).encode("utf-8"))

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise SinkError(f"{self.path}: not open")
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            os.fdatasync(self._fd)
        except OSError as exc:
            raise SinkError(f"{self.path}: write failed: {exc.strerror}") from None
        self._size += len(data)

    def _rotate(self) -> None:
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        for i in range(self.keep - 1, 0, -1):
            try:
                os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
            except FileNotFoundError:
                pass
        os.replace(self.path, f"{self.path}.1")
        self.rotations += 1
        self._open()

    async def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def info(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self._size, "rotations": self.rotations}


def _last_uid(path: str, size: int) -> str | None:
    """`metadata.uid` of the file's last complete line, if it is one of our events."""
    if size == 0:
        return None
    try:
        with open(path, "rb") as f:
            f.seek(max(0, size - 65536))
            tail = f.read()
    except OSError:
        return None
    lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
    try:
        event = json.loads(lines[-1])
        uid = event["metadata"]["uid"]
    except (ValueError, KeyError, TypeError):
        return None
    return uid if isinstance(uid, str) else None


__all__ = ["Drain", "DrainThread", "FileSink", "Row", "Sink", "SinkError"]
