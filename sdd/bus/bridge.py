"""The D-Bus bridge: the daemon's hub events as signals of `org.searchanddestroy.Sdd1`, its status as properties.

`BusBridge` owns the connection's life: connect, export the object, request the name, pump hub events out as
signals, coalesce PropertiesChanged, reconnect, stop. What goes on the wire is in `model`, the exported
interface in `interface`, the dbus-next 0.2.3 workarounds in `quirks`. dbus-next connects synchronously in its
constructor, so each attempt probes the address in a thread first (`probe` in sdd_client.dbus_quirks), and it
may leave its socket open after a disconnect (`close_transport` there).

D-Bus is output only and optional. `BusBridge.start()` never raises because of the bus: when the bus is
missing or refuses us, the bridge logs it and a reconnect loop tries again with a growing back-off
(waiting on an event, not polling); when the bus comes back the object is exported again and the name
re-requested. Hub events that arrive while disconnected are consumed and dropped (signals are not replayed).
Signals are batched: a signal after a quiet spell goes out at once, those of a burst are gathered for up to
`SIGNAL_WINDOW` (`BURST_WINDOW` while writes carry `BURST_EVENTS` or more) and go out as one write of
ready-made message bytes (`wire`, marshalled without dbus-next's generic marshaller), in order, with the
signatures of the contract.
`PropertiesChanged` is coalesced: at most one per `coalesce_interval` however many events a burst brings.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from dbus_next import Message, RequestNameReply
from dbus_next.aio import MessageBus
from sdd_client.dbus_quirks import close_transport, probe

from sdd import hub as hub_events
from sdd.hub import EventHub, Published, Subscription

from .address import BusKind, parse_bus_spec, resolve_address
from .interface import Sdd1Interface
from .model import (
    BUS_NAME,
    OBJECT_PATH,
    PROPERTY_TRIGGERS,
    SIGNAL_EVENTS,
    SIGNAL_WINDOW,
    BridgeState,
    Properties,
    next_window,
    signal_for,
)
from .quirks import open_message_bus, quiet_client_errors, send_batch, write_backlog
from .wire import signal_message

log = logging.getLogger("sdd.bus")

# Signals waiting in the connection's write queue beyond this are dropped (and counted), so a bus that does
# not read fast enough can never make the daemon's memory grow without bound.
MAX_WRITE_BACKLOG = 10_000
CONNECT_TIMEOUT = 10.0


class BusBridge:
    """Publishes hub events on D-Bus; see the module docstring. Start and stop it from the event loop."""

    def __init__(
        self,
        hub: EventHub,
        status: Callable[[], Mapping[str, Any]],
        bus_spec: str,
        *,
        coalesce_interval: float = 0.2,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        queue_size: int = 1000,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._hub = hub
        self._on_change = on_change  # called after every change of state, name ownership or last error
        self._status = status
        self.bus_spec = bus_spec
        self.coalesce_interval = coalesce_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._queue_size = queue_size
        self._kind: BusKind | None = None
        self.state = BridgeState.STOPPED
        self.last_error: str | None = None
        self.address: str | None = None
        self.dropped_signals = 0  # signals not sent because the bus did not keep up
        self.sent_signals = 0  # signals handed to the bus connection
        self.sent_batches = 0  # the writes they went out in (at most one per SIGNAL_WINDOW)
        self.connections = 0  # successful connections so far (reconnects = connections - 1)
        self.owns_name = False  # whether this connection is the primary owner of BUS_NAME (NameAcquired/Lost)
        self._iface = Sdd1Interface(self._read_properties)
        self._bus: MessageBus | None = None
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._connected = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._state_changed = asyncio.Event()  # set on every connect/disconnect, for waiters
        self._flush_handle: asyncio.TimerHandle | None = None
        self._last_flush = -math.inf
        self._emitted: dict[str, Any] = {}
        self._last_props: Properties | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self, first_attempt_timeout: float = 2.0) -> None:
        """Subscribe to the hub and connect. Never raises because of the bus. Waits at most
        `first_attempt_timeout` for the first connection attempt, so that when the bus is there the name is
        owned by the time start() returns. A second start() while running does nothing."""
        if self._tasks:
            return
        try:
            self._kind = parse_bus_spec(self.bus_spec)
        except ValueError as e:
            log.error("D-Bus disabled: %s", e)
            self.state, self.last_error = BridgeState.DISABLED, str(e)
            self._changed()
            return
        if self._kind is BusKind.NONE:
            log.info("D-Bus disabled (dbus.bus = \"none\")")
            self.state = BridgeState.DISABLED
            self._changed()
            return
        quiet_client_errors()
        self._stop.clear()
        self.state = BridgeState.CONNECTING
        self._sub = self._hub.subscribe(self._queue_size, SIGNAL_EVENTS | PROPERTY_TRIGGERS)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._pump(self._sub), name="sdd-bus-pump"),
            loop.create_task(self._connection_loop(), name="sdd-bus-connection"),
        ]
        try:
            await asyncio.wait_for(self._first_attempt.wait(), first_attempt_timeout)
        except TimeoutError:
            log.warning("D-Bus: first connection attempt still pending after %.1fs", first_attempt_timeout)

    async def stop(self, drain_timeout: float = 1.0) -> None:
        """Send what the hub had already queued and the final property values (the daemon's last words, such
        as State "stopping" and interrupted runs), then release the name by disconnecting and close the
        socket. Waits at most about 2 x `drain_timeout` for a bus that does not answer. Idempotent."""
        self._stop.set()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._sub is not None:
            # A closed subscription still yields what it holds, then ends the pump.
            self._sub.close()
            self._sub = None
            if self._tasks:
                await asyncio.wait({self._tasks[0]}, timeout=drain_timeout)
        bus = self._bus
        if bus is not None and self.connected:
            self._flush()
            await self._barrier(bus, drain_timeout)
        if bus is not None:
            bus.disconnect()
        # Python 3.11's asyncio.wait_for can swallow a cancellation that coincides with its inner future
        # finishing: a task still running after a cancel is asked again.
        pending = {t for t in self._tasks if not t.done()}
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        for task in self._tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("D-Bus bridge task failed", exc_info=task.exception())
        self._tasks = []
        if bus is not None:
            close_transport(bus)
        self._bus = None
        self._connected.clear()
        if self.state is not BridgeState.DISABLED:
            self.state = BridgeState.STOPPED
        self._changed()

    def _changed(self) -> None:
        self._state_changed.set()
        if self._on_change is not None:
            self._on_change()

    @staticmethod
    async def _barrier(bus: MessageBus, timeout: float) -> None:
        """Return once the bus has received everything written so far: messages go out in order, so the
        bus's answer to a Ping comes after it has read (and routed) every signal before it."""
        ping = Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                       interface="org.freedesktop.DBus.Peer", member="Ping")
        try:
            await asyncio.wait_for(bus.call(ping), timeout)
        except Exception as e:  # noqa: BLE001 - best effort: the bus may be gone already
            log.debug("D-Bus: no answer to the final ping: %s", e)

    @property
    def queued(self) -> int:
        """Hub events waiting for the bridge to take them (for a feeder that must not outrun it)."""
        return self._sub.queued if self._sub is not None else 0

    @property
    def connected(self) -> bool:
        return self._bus is not None and self._bus.connected and self._connected.is_set()

    async def wait_connected(self, timeout: float, connections: int = 1) -> bool:
        """True once connected (name requested) for at least the `connections`-th time; False on timeout.
        `wait_connected(t, bridge.connections + 1)` waits for the next reconnection."""

        async def _wait() -> None:
            while not (self.connected and self.connections >= connections):
                self._state_changed.clear()
                await self._state_changed.wait()

        try:
            await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            return False
        return True

    def info(self) -> dict[str, Any]:
        """The connection as the bridge process reports it to the daemon (`process.BridgeProcess.report`)."""
        return {
            "bus": self.bus_spec,
            "state": self.state.value,
            "address": self.address,
            "name": BUS_NAME,
            "unique_name": self._bus.unique_name if self.connected and self._bus else None,
            "owns_name": self.owns_name,
            "reconnects": max(self.connections - 1, 0),
            "dropped_signals": self.dropped_signals,
            "last_error": self.last_error,
        }

    # --- connection ---------------------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        assert self._kind is not None
        delay = self.backoff_initial
        logged_error: str | None = None
        while not self._stop.is_set():
            try:
                bus = await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to reach the bus means "retry later"
                self.last_error = f"{type(e).__name__}: {e}"
                # One warning per distinct failure, not one per retry: a missing bus is a normal state.
                if self.last_error != logged_error:
                    log.warning("D-Bus: cannot connect to %s (%s); retrying in the background",
                                self.address or self.bus_spec, self.last_error)
                    logged_error = self.last_error
                else:
                    log.debug("D-Bus: still cannot connect: %s", self.last_error)
                self._first_attempt.set()
                self._changed()
                await self._wait_stop(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            self.connections += 1
            delay = self.backoff_initial
            logged_error = None
            self._bus = bus
            self.state = BridgeState.CONNECTED
            self.last_error = None
            # The new bus has no subscriber who saw older values: take the current ones as the baseline.
            self._emitted = self._read_properties().as_dbus()
            self._connected.set()
            self._first_attempt.set()
            self._changed()
            log.info("D-Bus: connected to %s as %s, owning %s", self.address, bus.unique_name, BUS_NAME)
            try:
                await bus.wait_for_disconnect()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - dbus-next reports a lost bus as whatever the socket raised
                self.last_error = f"connection lost: {type(e).__name__}: {e}"
            finally:
                self._connected.clear()
                self._bus = None
                self.owns_name = False
                close_transport(bus)
            if self._stop.is_set():
                break
            self.state = BridgeState.CONNECTING
            self._changed()
            log.warning("D-Bus: lost the bus at %s; reconnecting in the background", self.address)
            # Reconnect at once: a bus restart is usually quick, and failures back off from here.

    async def _connect_once(self) -> MessageBus:
        assert self._kind is not None
        self.address = resolve_address(self._kind, self.bus_spec)
        # dbus-next connects its socket synchronously in the constructor: a TCP peer that does not answer,
        # or a unix listener with a full backlog, would freeze the daemon's event loop. Probe in a thread
        # first, so an unreachable bus costs a worker thread, not the loop.
        await asyncio.to_thread(probe, self.address, CONNECT_TIMEOUT)
        bus = open_message_bus(self.address)
        try:
            # A bus that accepts but never answers must not hold the loop's connection task forever.
            await asyncio.wait_for(bus.connect(), CONNECT_TIMEOUT)
            bus.export(OBJECT_PATH, self._iface)
            bus.add_message_handler(self._on_name_signal)
            reply = await asyncio.wait_for(bus.request_name(BUS_NAME), CONNECT_TIMEOUT)
            self.owns_name = reply in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER)
            if not self.owns_name:
                # Queued behind another owner: we get the name when it leaves; signals still go out.
                log.warning("D-Bus: %s is owned by another connection; queued for it (%s)", BUS_NAME, reply.name)
        except BaseException:
            bus.disconnect()
            close_transport(bus)
            raise
        return bus

    def _on_name_signal(self, msg: Message) -> None:
        # The bus tells its owner when a queued name becomes ours, or is taken away.
        if (msg.sender == "org.freedesktop.DBus" and msg.member in ("NameAcquired", "NameLost")
                and msg.body and msg.body[0] == BUS_NAME):
            self.owns_name = msg.member == "NameAcquired"
            self._changed()
            log.info("D-Bus: %s %s", "now owning" if self.owns_name else "lost", BUS_NAME)

    async def _wait_stop(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    # --- events → signals ---------------------------------------------------------------------------------

    async def _pump(self, sub: Subscription) -> None:
        # A signal after a quiet spell goes out at once; those of a burst are gathered for up to
        # SIGNAL_WINDOW (BURST_WINDOW once the writes are big) and go out as one write.
        window = SIGNAL_WINDOW
        while (batch := await sub.batch(window)) is not None:
            window = next_window(len(batch))
            signals = [event for event in batch if event.name in SIGNAL_EVENTS]
            if batch and batch[0].name == hub_events.LAGGED:  # (take() puts it first)
                log.warning("D-Bus: fell behind the hub and dropped %s events", batch[0].data.get("missed"))
            # (in a burst a flush is already pending: the batch need not be looked at again)
            if self._flush_handle is None and any(event.name in PROPERTY_TRIGGERS for event in batch):
                self._schedule_flush()
            if signals and self.connected:
                self._emit(signals)

    def _emit(self, events: list[Published]) -> None:
        """The signals of `events`, marshalled here (`wire`) and written to the bus in one piece."""
        bus = self._bus
        assert bus is not None
        room = MAX_WRITE_BACKLOG - write_backlog(bus)
        if room < len(events):
            self.dropped_signals += len(events) - max(room, 0)
            events = events[:max(room, 0)]
        messages: list[bytes] = []
        append, next_serial = messages.append, bus.next_serial
        for event in events:
            sig = signal_for(event.name, event.data)
            if sig is None:
                continue
            member, args = sig
            try:
                append(signal_message(member, args, next_serial()))
            except Exception:
                # A marshalling bug must not stop the bridge; the arguments are already cleaned.
                log.exception("D-Bus: could not emit %s", member)
        if messages:
            send_batch(bus, b"".join(messages), len(messages))
            self.sent_signals += len(messages)
            self.sent_batches += 1

    # --- properties ---------------------------------------------------------------------------------------

    def _read_properties(self) -> Properties:
        try:
            props = Properties.from_status(self._status())
        except Exception:
            log.exception("D-Bus: status() failed; serving the last known properties")
            if self._last_props is None:
                return Properties("", "unknown", 0, 0)
            return self._last_props
        self._last_props = props
        return props

    def _schedule_flush(self) -> None:
        if self._flush_handle is not None or self._stop.is_set():
            return
        loop = asyncio.get_running_loop()
        self._flush_handle = loop.call_at(max(loop.time(), self._last_flush + self.coalesce_interval), self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self._last_flush = asyncio.get_running_loop().time()
        if not self.connected:
            return
        current = self._read_properties().as_dbus()
        changed = {k: v for k, v in current.items() if self._emitted.get(k) != v}
        if not changed:
            return
        try:
            self._iface.emit_properties_changed(changed)
        except Exception:
            log.exception("D-Bus: could not emit PropertiesChanged")
            return
        self._emitted.update(changed)
        # Check once more after the interval: the state may settle after the event that triggered us.
        self._schedule_flush()
