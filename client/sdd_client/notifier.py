"""sdd-notifier: shows desktop notifications for the sdd daemon's D-Bus signals.

It listens on the bus the daemon publishes on (the system bus by default, `--session`, or `--address`)
and calls `org.freedesktop.Notifications.Notify` on the user's session bus (or `--notify-address`).
What is shown for which signal is decided in `notify_rules`. It keeps running across daemon restarts
(its match rules name the well-known name, interface and path, never a unique name) and across bus
restarts (each connection has its own reconnect loop with back-off). SIGINT/SIGTERM end it cleanly.

Only signals sent by the current owner of `org.searchanddestroy.Sdd1` are believed: on the system bus only
root may own that name (packaging/dbus policy), so another local user cannot fake a notification.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sdd_client.dbus_quirks import close_transport, probe
from sdd_client.notify_rules import Notice, Urgency, escape_markup, notice_for

log = logging.getLogger("sdd_client.notifier")

SDD_NAME = "org.searchanddestroy.Sdd1"
SDD_PATH = "/org/searchanddestroy/Sdd1"
SDD_INTERFACE = "org.searchanddestroy.Sdd1"
NOTIFY_NAME = "org.freedesktop.Notifications"
NOTIFY_PATH = "/org/freedesktop/Notifications"

SIGNAL_RULE = f"type='signal',sender='{SDD_NAME}',path='{SDD_PATH}',interface='{SDD_INTERFACE}'"
OWNER_RULE = (
    "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
    f"interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{SDD_NAME}'"
)
CALL_TIMEOUT = 10.0
QUEUE_SIZE = 50


class NotifierError(Exception):
    """A usage or environment problem that stops sdd-notifier before it starts."""


def system_address(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get("DBUS_SYSTEM_BUS_ADDRESS") or "unix:path=/run/dbus/system_bus_socket"


def session_address(environ: Mapping[str, str] = os.environ) -> str:
    if environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return environ["DBUS_SESSION_BUS_ADDRESS"]
    if environ.get("XDG_RUNTIME_DIR"):
        return f"unix:path={environ['XDG_RUNTIME_DIR']}/bus"
    raise NotifierError("no session bus: DBUS_SESSION_BUS_ADDRESS and XDG_RUNTIME_DIR are both unset")


@dataclass(frozen=True)
class NotifierOptions:
    signal_address: str  # where the daemon's signals are
    notify_address: str  # where org.freedesktop.Notifications is
    app_name: str = "sdd"
    max_notifications: int | None = None  # stop after this many (tests, scripts)
    backoff_initial: float = 1.0
    backoff_max: float = 30.0






async def _connect(address: str) -> Any:
    from dbus_next.aio import MessageBus

    await asyncio.to_thread(probe, address, CALL_TIMEOUT)
    bus = MessageBus(bus_address=address)
    # A bus that dies while nobody awaits wait_for_disconnect() must not log "exception never retrieved".
    bus._disconnect_future.add_done_callback(lambda f: f.cancelled() or f.exception())
    try:
        await asyncio.wait_for(bus.connect(), CALL_TIMEOUT)
    except BaseException:
        close_transport(bus)
        raise
    return bus


async def _call(bus: Any, destination: str, path: str, interface: str, member: str,
                signature: str = "", body: Sequence[Any] = ()) -> Any:
    from dbus_next import Message, MessageType

    reply = await asyncio.wait_for(
        bus.call(Message(destination=destination, path=path, interface=interface, member=member,
                         signature=signature, body=list(body))),
        CALL_TIMEOUT,
    )
    if reply is None or reply.message_type is MessageType.ERROR:
        name = getattr(reply, "error_name", None)
        raise ConnectionError(f"{interface}.{member} failed: {name} {getattr(reply, 'body', '')}")
    return reply


async def _bus_call(bus: Any, member: str, signature: str = "", body: Sequence[Any] = ()) -> Any:
    return await _call(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                       member, signature, body)


async def _cancel_all(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel and reap tasks. Python 3.11's asyncio.wait_for can swallow a cancellation that coincides with
    its inner future finishing, so a task that is still running is asked again."""
    pending = set(tasks)
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    for t in tasks:
        if not t.cancelled() and t.exception() is not None:
            log.error("notifier task failed", exc_info=t.exception())


class Notifier:
    """Listens for the daemon's signals and shows desktop notifications until `stop()`."""

    def __init__(self, options: NotifierOptions) -> None:
        self.options = options
        self.received = 0  # signals that called for a notification
        self.sent = 0  # notifications shown
        self.dropped = 0  # notices lost to a full queue or a notification server that would not take them
        self.connections = 0  # successful connections to the signal bus
        self._queue: asyncio.Queue[Notice] = asyncio.Queue(QUEUE_SIZE)
        self._stop = asyncio.Event()
        self._listening = asyncio.Event()
        self._changed = asyncio.Event()
        self._owner: str | None = None
        self._notify_bus: Any = None
        self._listen_bus: Any = None
        self._markup = False

    def stop(self) -> None:
        self._stop.set()

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    @property
    def unique_name(self) -> str | None:
        """The notifier's name on the signal bus while connected."""
        return self._listen_bus.unique_name if self._listen_bus is not None else None

    async def wait_listening(self, timeout: float, connections: int = 1) -> None:
        """Until match rules are in place on the `connections`-th connection (raises TimeoutError)."""

        async def _wait() -> None:
            while not (self._listening.is_set() and self.connections >= connections):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_wait(), timeout)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Until `predicate()` holds, re-checked whenever a signal arrives or a notification is shown."""

        async def _wait() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_wait(), timeout)

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._listen_loop(), name="notifier-listen"),
            asyncio.create_task(self._show_loop(), name="notifier-show"),
        ]
        try:
            await self._stop.wait()
        finally:
            await _cancel_all(tasks)
            if self._notify_bus is not None:
                close_transport(self._notify_bus)
                self._notify_bus = None

    # --- signals in ---------------------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        delay = self.options.backoff_initial
        last_error = None
        while not self._stop.is_set():
            try:
                bus = await self._subscribe()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to reach the bus means "retry later"
                error = f"{type(e).__name__}: {e}"
                if error != last_error:
                    log.warning("cannot listen on %s (%s); retrying", self.options.signal_address, error)
                    last_error = error
                await self._sleep(delay)
                delay = min(delay * 2, self.options.backoff_max)
                continue
            delay, last_error = self.options.backoff_initial, None
            self.connections += 1
            self._listen_bus = bus
            self._listening.set()
            self._changed.set()
            log.info("listening for sdd signals on %s", self.options.signal_address)
            try:
                await bus.wait_for_disconnect()
            except Exception as e:  # noqa: BLE001 - a lost bus reports whatever the socket raised
                log.warning("lost the bus at %s (%s); reconnecting", self.options.signal_address, e)
            finally:
                self._listening.clear()
                self._listen_bus = None
                self._changed.set()
                close_transport(bus)

    async def _subscribe(self) -> Any:
        from dbus_next import MessageType

        bus = await _connect(self.options.signal_address)

        def on_message(msg: Any) -> None:
            if msg.message_type is not MessageType.SIGNAL:
                return
            if msg.sender == "org.freedesktop.DBus" and msg.member == "NameOwnerChanged":
                if len(msg.body) == 3 and msg.body[0] == SDD_NAME:
                    self._owner = msg.body[2] or None
                return
            if msg.interface != SDD_INTERFACE or msg.path != SDD_PATH:
                return
            # Unicast signals bypass match rules: believe only the current owner of the well-known name.
            if self._owner is None or msg.sender != self._owner:
                log.debug("ignored %s from %s (owner is %s)", msg.member, msg.sender, self._owner)
                return
            notice = notice_for(msg.member, msg.body)
            if notice is not None:
                self._enqueue(notice)

        try:
            bus.add_message_handler(on_message)
            await _bus_call(bus, "AddMatch", "s", [OWNER_RULE])
            await _bus_call(bus, "AddMatch", "s", [SIGNAL_RULE])
            try:
                reply = await _bus_call(bus, "GetNameOwner", "s", [SDD_NAME])
                # A NameOwnerChanged may have arrived first; both say the same thing then.
                self._owner = reply.body[0]
            except ConnectionError:
                self._owner = None  # the daemon is not running (yet): NameOwnerChanged will tell us
        except BaseException:
            close_transport(bus)
            raise
        return bus

    def _enqueue(self, notice: Notice) -> None:
        self.received += 1
        try:
            self._queue.put_nowait(notice)
        except asyncio.QueueFull:
            self.dropped += 1
        self._changed.set()

    # --- notifications out --------------------------------------------------------------------------------

    async def _show_loop(self) -> None:
        while not self._stop.is_set():
            notice = await self._queue.get()
            if not await self._show_with_retry(notice):
                self.dropped += 1
            if self.dropped and self._queue.empty():
                more, self.dropped = self.dropped, 0
                await self._show_with_retry(
                    Notice("sdd: more events", f"{more} more sdd notifications were not shown.", Urgency.NORMAL)
                )
            if self.options.max_notifications is not None and self.sent >= self.options.max_notifications:
                self.stop()
                return

    async def _show_with_retry(self, notice: Notice) -> bool:
        """Show one notice; when the notification bus is gone, reconnect with back-off for a while."""
        delay = self.options.backoff_initial
        for _ in range(5):
            try:
                await self._show(notice)
                self.sent += 1
                self._changed.set()
                return True
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure: drop the connection and try again
                log.warning("cannot show a notification on %s: %s: %s", self.options.notify_address,
                            type(e).__name__, e)
                if self._notify_bus is not None:
                    close_transport(self._notify_bus)
                    self._notify_bus = None
                await self._sleep(delay)
                delay = min(delay * 2, self.options.backoff_max)
                if self._stop.is_set():
                    break
        return False

    async def _show(self, notice: Notice) -> None:
        from dbus_next import Variant

        bus = self._notify_bus
        if bus is None or not bus.connected:
            if bus is not None:
                close_transport(bus)
            bus = self._notify_bus = await _connect(self.options.notify_address)
            try:
                caps = await _call(bus, NOTIFY_NAME, NOTIFY_PATH, NOTIFY_NAME, "GetCapabilities")
                self._markup = "body-markup" in caps.body[0]
            except ConnectionError:
                self._markup = False
        body = escape_markup(notice.body) if self._markup else notice.body
        hints = {
            "urgency": Variant("y", int(notice.urgency)),
            "category": Variant("s", notice.category),
            "desktop-entry": Variant("s", "sdd-notifier"),
        }
        await _call(
            bus, NOTIFY_NAME, NOTIFY_PATH, NOTIFY_NAME, "Notify", "susssasa{sv}i",
            [self.options.app_name, 0, notice.icon, notice.summary, body, [], hints, -1],
        )

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


# --- command line -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sdd-notifier",
        description="Show desktop notifications for the sdd daemon's D-Bus signals: critical and high "
        "detections, failed, rolled-back or interrupted runs, and workflow notifications.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--system", action="store_true", help="listen on the system bus (default)")
    where.add_argument("--session", action="store_true", help="listen on the session bus (daemon run with --user)")
    where.add_argument("--address", metavar="ADDR", help="listen on the bus at this D-Bus address")
    p.add_argument("--notify-address", metavar="ADDR",
                   help="where org.freedesktop.Notifications is (default: the session bus)")
    p.add_argument("--max-notifications", type=int, metavar="N", help="exit after showing N notifications")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    args = p.parse_args(argv)
    if args.max_notifications is not None and args.max_notifications < 1:
        p.error("--max-notifications must be at least 1")
    return args


def options_from_args(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> NotifierOptions:
    if args.address:
        signal_address = args.address
    elif args.session:
        signal_address = session_address(environ)
    else:
        signal_address = system_address(environ)
    notify_address = args.notify_address or session_address(environ)
    for name, value in (("--address", signal_address), ("--notify-address", notify_address)):
        _check_address(name, value)
    return NotifierOptions(signal_address, notify_address, max_notifications=args.max_notifications)


def _check_address(option: str, address: str) -> None:
    from dbus_next._private.address import parse_address

    try:
        parse_address(address)
    except Exception as e:
        raise NotifierError(f"{option}: {address!r} is not a valid D-Bus address: {e}") from e


async def _amain(options: NotifierOptions) -> int:
    notifier = Notifier(options)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, notifier.stop)
    try:
        await notifier.run()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="sdd-notifier: %(levelname)s: %(message)s",
    )
    try:
        import dbus_next  # noqa: F401
    except ImportError:
        print("sdd-notifier: needs dbus-next: pip install 'sdd-client[notifier]'", file=sys.stderr)
        return 1
    try:
        options = options_from_args(args)
    except NotifierError as e:
        print(f"sdd-notifier: {e}", file=sys.stderr)
        return 2
    return asyncio.run(_amain(options))


if __name__ == "__main__":
    sys.exit(main())
