"""Workarounds for dbus-next 0.2.3, kept in one place so the bridge reads as plain dbus-next.

It drops the connection when the socket buffer fills (a signal burst; `_PatientWriter` waits instead), leaks
the socket of a failed connect (`_close_failed_bus`, with `close_transport` from sdd_client.dbus_quirks,
which also unregisters the fd from the loop before closing it), and logs a traceback on the root logger for
every refused client call (`_QuietClientErrors`). `open_message_bus` and `quiet_client_errors` apply them;
`write_backlog` reads the writer's queue, which dbus-next does not expose, and `send_batch` hands it
ready-made message bytes (see `wire`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from dbus_next.aio import MessageBus
from dbus_next.aio.message_bus import _MessageWriter
from dbus_next.message_bus import BaseMessageBus
from sdd_client.dbus_quirks import close_transport


class _PatientWriter(_MessageWriter):  # type: ignore[misc]
    """dbus-next 0.2.3's writer treats a full socket buffer (EAGAIN) as a fatal error and drops the
    connection, so a burst of signals would cut the bridge off the bus. This one waits for the socket to
    become writable again instead (the writer stays registered with the loop until the queue is empty).
    It also takes ready-made bytes holding many messages (`send_batch`: the bridge's signals of one loop
    iteration, one queue entry and usually one send), and counts the messages not yet written (`pending`).
    The bridge never negotiates unix fds, so the fd-passing branch of the original is left out."""

    def __init__(self, bus: Any) -> None:
        super().__init__(bus)
        self.pending = 0  # messages queued or being written
        self._counts: deque[int] = deque()  # messages in each queue entry, in queue order
        self._count = 0  # messages in the entry being written

    def buffer_message(self, msg: Any, future: Any = None) -> None:
        if future is not None:
            future.add_done_callback(_retrieve)  # nobody awaits a signal's send future
        super().buffer_message(msg, future)
        self._counts.append(1)
        self.pending += 1

    def send_batch(self, data: bytes, count: int) -> None:
        """Queues `count` whole messages marshalled back to back in `data`, and writes what the socket
        takes at once when nothing is queued before them."""
        self.messages.put_nowait((data, None, None))
        self._counts.append(count)
        self.pending += count
        if not self.bus.unique_name:
            return  # not yet connected: schedule_write() starts the writer once the bus is ready
        if self.buf is None and self.messages.qsize() == 1:
            self.write_callback()
        if self.buf is not None or self.messages.qsize():
            self.loop.add_writer(self.fd, self.write_callback)

    def write_callback(self) -> None:
        try:
            while True:
                if self.buf is None:
                    if self.messages.qsize() == 0:
                        self.loop.remove_writer(self.fd)
                        return
                    buf, unix_fds, fut = self.messages.get_nowait()
                    self.unix_fds = unix_fds
                    self.buf = memoryview(buf)
                    self.offset = 0
                    self.fut = fut
                    self._count = self._counts.popleft() if self._counts else 1
                try:
                    self.offset += self.sock.send(self.buf[self.offset :])
                except BlockingIOError:
                    return  # socket buffer full: called again when it is writable
                if self.offset >= len(self.buf):
                    self.buf = None
                    self.pending -= self._count
                    if self.fut is not None and not self.fut.done():
                        self.fut.set_result(None)
        except Exception as e:  # noqa: BLE001 - as dbus-next: any other error ends the connection
            if self.fut is not None and not self.fut.done():
                self.fut.set_exception(e)
            self.bus._finalize(e)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _close_failed_bus(exc: BaseException) -> None:
    """A MessageBus whose constructor failed to connect leaks its socket; find it in the traceback."""
    tb = exc.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, BaseMessageBus):
            close_transport(obj)
            return
        tb = tb.tb_next


class _QuietClientErrors(logging.Filter):
    """dbus-next 0.2.3 logs a full traceback on the root logger each time it refuses a client's call (a write
    to a read-only property, an unknown property): any client could flood the daemon's log that way. Such a
    refusal is the client's error and the client gets it as a D-Bus error reply: keep one debug line."""

    PREFIX = "got unexpected error processing a message"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "root" and record.levelno == logging.ERROR and "dbus_next" in record.pathname:
            text = record.getMessage()
            if text.startswith(self.PREFIX) and "dbus_next.errors.DBusError:" in text:
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                record.msg, record.args = "D-Bus: refused a client's call: %s", (text.splitlines()[0],)
        return True


_QUIET_CLIENT_ERRORS = _QuietClientErrors()


def open_message_bus(address: str) -> MessageBus:
    """A MessageBus for `address` (connected socket, not yet authenticated) with the quirks above handled."""
    try:
        bus = MessageBus(bus_address=address)
    except Exception as e:
        _close_failed_bus(e)
        raise
    bus._writer = _PatientWriter(bus)
    # If the bus dies while nobody awaits wait_for_disconnect() (e.g. during stop()), asyncio would log
    # "Future exception was never retrieved": mark it retrieved up front.
    bus._disconnect_future.add_done_callback(_retrieve)
    return bus


def write_backlog(bus: MessageBus) -> int:
    """Messages waiting in the bus's write queue (or being written)."""
    writer = bus._writer
    return writer.pending if isinstance(writer, _PatientWriter) else writer.messages.qsize()


def send_batch(bus: MessageBus, data: bytes, count: int) -> None:
    """Sends `count` marshalled messages (their serials taken from `bus.next_serial()`) in one write."""
    writer = bus._writer
    assert isinstance(writer, _PatientWriter), "a bus made by open_message_bus"
    writer.send_batch(data, count)


def quiet_client_errors() -> None:
    """Install `_QuietClientErrors` on the root logger (once)."""
    root = logging.getLogger()
    if _QUIET_CLIENT_ERRORS not in root.filters:
        root.addFilter(_QUIET_CLIENT_ERRORS)
