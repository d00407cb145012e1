"""The D-Bus bridge: the daemon's hub events as signals of `org.searchanddestroy.Sdd1`, its status as properties.

This is the only module of the daemon that imports dbus-next. Its 0.2.3 quirks are handled here: it drops
the connection when the socket buffer fills (a signal burst; `_PatientWriter` waits instead), connects
synchronously in its constructor (probed in a thread first), may leave its socket open after a disconnect
and leaks the socket of a failed connect (`close_transport` in sdd_client.dbus_quirks, which also unregisters the fd from the loop
before closing it), and logs a traceback on the root logger for every refused client call
(`_QuietClientErrors`).

D-Bus is output only and optional. `BusBridge.start()` never raises because of the bus: when the bus is
missing or refuses us, the bridge logs it and a reconnect loop tries again with a growing back-off
(waiting on an event, not polling); when the bus comes back the object is exported again and the name
re-requested. Hub events that arrive while disconnected are consumed and dropped (signals are not replayed).
`PropertiesChanged` is coalesced: at most one per `coalesce_interval` however many events a burst brings.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from dbus_next import Message, RequestNameReply
from dbus_next.aio import MessageBus
from dbus_next.aio.message_bus import _MessageWriter
from dbus_next.constants import PropertyAccess
from dbus_next.message_bus import BaseMessageBus
from dbus_next.service import ServiceInterface, dbus_property, signal
from sdd_client.dbus_quirks import close_transport, probe

from sdd import hub as hub_events
from sdd.hub import EventHub, Subscription

log = logging.getLogger("sdd.bus")

BUS_NAME = "org.searchanddestroy.Sdd1"
OBJECT_PATH = "/org/searchanddestroy/Sdd1"
INTERFACE = "org.searchanddestroy.Sdd1"

# D-Bus strings must be valid UTF-8 without NUL (the bus disconnects a sender of an invalid message), and
# detection fields are hostile input: they are cleaned and capped before they reach the wire.
MAX_STRING = 4096
_U32_MAX = 2**32 - 1
# Signals waiting in the connection's write queue beyond this are dropped (and counted), so a bus that does
# not read fast enough can never make the daemon's memory grow without bound.
MAX_WRITE_BACKLOG = 10_000
CONNECT_TIMEOUT = 10.0

# Hub events that can change a property value: each schedules a (coalesced) PropertiesChanged check.
PROPERTY_TRIGGERS = frozenset(
    {
        hub_events.STATUS_CHANGED,
        hub_events.RUN_STARTED,
        hub_events.RUN_FINISHED,
        hub_events.DETECTION_RECEIVED,
        hub_events.DETECTION_DUPLICATE,
        hub_events.DETECTION_EXCLUDED,
        hub_events.DETECTION_REJECTED,
        hub_events.LAGGED,
    }
)
SIGNAL_EVENTS = frozenset(
    {
        hub_events.DETECTION_RECEIVED,
        hub_events.RUN_STARTED,
        hub_events.STEP_FINISHED,
        hub_events.RUN_FINISHED,
        hub_events.NOTIFICATION,
    }
)


class BusKind(str, enum.Enum):
    SYSTEM = "system"
    SESSION = "session"
    NONE = "none"
    ADDRESS = "address"


class BridgeState(str, enum.Enum):
    DISABLED = "disabled"  # bus = "none", or an unusable bus spec
    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"


def parse_bus_spec(spec: str) -> BusKind:
    """`system` | `session` | `none` | a D-Bus address (`unix:path=...`, `tcp:host=...,port=...`)."""
    if spec in ("system", "session", "none"):
        return BusKind(spec)
    if ":" not in spec:
        raise ValueError(f"dbus.bus: {spec!r} is neither system, session, none nor a D-Bus address")
    from dbus_next._private.address import parse_address

    try:
        entries = parse_address(spec)
    except Exception as e:
        raise ValueError(f"dbus.bus: {spec!r} is not a valid D-Bus address: {e}") from e
    # dbus-next accepts addresses it then cannot use; insist on what it can connect to.
    for transport, options in entries:
        usable = (transport == "unix" and ("path" in options or "abstract" in options)) or (
            transport == "tcp" and options.get("port", "").isdigit()
        )
        if not usable:
            raise ValueError(
                f"dbus.bus: {spec!r}: use unix:path=..., unix:abstract=... or tcp:host=...,port=..."
            )
    return BusKind.ADDRESS


def resolve_address(kind: BusKind, spec: str, environ: Mapping[str, str] = os.environ) -> str:
    """The address to connect to now (re-resolved on each attempt: a session bus socket may appear later)."""
    if kind is BusKind.ADDRESS:
        return spec
    if kind is BusKind.SYSTEM:
        return environ.get("DBUS_SYSTEM_BUS_ADDRESS") or "unix:path=/run/dbus/system_bus_socket"
    if kind is BusKind.SESSION:
        if environ.get("DBUS_SESSION_BUS_ADDRESS"):
            return environ["DBUS_SESSION_BUS_ADDRESS"]
        runtime = environ.get("XDG_RUNTIME_DIR")
        if runtime:
            return f"unix:path={runtime}/bus"
        raise ConnectionError("no session bus: DBUS_SESSION_BUS_ADDRESS and XDG_RUNTIME_DIR are both unset")
    raise ValueError(f"no address for bus kind {kind.value}")


def clean_str(value: Any) -> str:
    """A value as a D-Bus-safe string: None → "", no NUL, no lone surrogates, at most MAX_STRING chars."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_STRING:
        text = text[: MAX_STRING - 1] + "…"
    # surrogateescape'd file names (non-UTF-8 bytes) cannot be encoded as UTF-8: show them escaped.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def clean_double(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def clean_u32(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return 0
    return min(max(number, 0), _U32_MAX)


@dataclass(frozen=True)
class Properties:
    version: str
    state: str
    active_runs: int
    queued_detections: int

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> Properties:
        return cls(
            version=clean_str(status.get("version")),
            state=clean_str(status.get("state")),
            active_runs=clean_u32(status.get("active_runs")),
            queued_detections=clean_u32(status.get("queued_detections")),
        )

    def as_dbus(self) -> dict[str, Any]:
        return {
            "Version": self.version,
            "State": self.state,
            "ActiveRuns": self.active_runs,
            "QueuedDetections": self.queued_detections,
        }


def signal_for(event: str, data: Mapping[str, Any]) -> tuple[str, list[Any]] | None:
    """The (member, arguments) of the signal a hub event becomes, or None when it is not one."""
    s, d = clean_str, clean_double
    if event == hub_events.DETECTION_RECEIVED:
        return "DetectionReceived", [
            s(data.get("detection_id")),
            s(data.get("type")),
            s(data.get("severity")),
            s(data.get("file_path")),
        ]
    if event == hub_events.RUN_STARTED:
        return "RunStarted", [s(data.get("run_id")), s(data.get("workflow_id")), s(data.get("detection_id"))]
    if event == hub_events.STEP_FINISHED:
        return "StepFinished", [
            s(data.get("run_id")),
            s(data.get("step_id")),
            s(data.get("status")),
            d(data.get("seconds")),
        ]
    if event == hub_events.RUN_FINISHED:
        return "RunFinished", [
            s(data.get("run_id")),
            s(data.get("workflow_id")),
            s(data.get("status")),
            d(data.get("seconds")),
        ]
    if event == hub_events.NOTIFICATION:
        return "Notification", [s(data.get("title")), s(data.get("body")), s(data.get("urgency") or "normal")]
    return None


_F = TypeVar("_F", bound=Callable[..., Any])


def _dbus_type(signature: str) -> Callable[[_F], _F]:
    """Give a member its D-Bus signature the way dbus-next reads it (the return annotation), without
    string annotations that linters and type checkers take for undefined names."""

    def decorate(fn: _F) -> _F:
        fn.__annotations__ = {"return": signature}
        return fn

    return decorate


class Sdd1Interface(ServiceInterface):  # type: ignore[misc]
    """The exported interface. Properties read the daemon's status on every Get (it is cheap)."""

    def __init__(self, properties: Callable[[], Properties]) -> None:
        super().__init__(INTERFACE)
        self._properties = properties

    @signal()
    @_dbus_type("ssss")
    def DetectionReceived(self, detection_id, type_, severity, file_path):  # type: ignore[no-untyped-def]
        return [detection_id, type_, severity, file_path]

    @signal()
    @_dbus_type("sss")
    def RunStarted(self, run_id, workflow_id, detection_id):  # type: ignore[no-untyped-def]
        return [run_id, workflow_id, detection_id]

    @signal()
    @_dbus_type("sssd")
    def StepFinished(self, run_id, step_id, status, seconds):  # type: ignore[no-untyped-def]
        return [run_id, step_id, status, seconds]

    @signal()
    @_dbus_type("sssd")
    def RunFinished(self, run_id, workflow_id, status, seconds):  # type: ignore[no-untyped-def]
        return [run_id, workflow_id, status, seconds]

    @signal()
    @_dbus_type("sss")
    def Notification(self, title, body, urgency):  # type: ignore[no-untyped-def]
        return [title, body, urgency]

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_type("s")
    def Version(self):  # type: ignore[no-untyped-def]
        return self._properties().version

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_type("s")
    def State(self):  # type: ignore[no-untyped-def]
        return self._properties().state

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_type("u")
    def ActiveRuns(self):  # type: ignore[no-untyped-def]
        return self._properties().active_runs

    @dbus_property(access=PropertyAccess.READ)
    @_dbus_type("u")
    def QueuedDetections(self):  # type: ignore[no-untyped-def]
        return self._properties().queued_detections




class _PatientWriter(_MessageWriter):  # type: ignore[misc]
    """dbus-next 0.2.3's writer treats a full socket buffer (EAGAIN) as a fatal error and drops the
    connection, so a burst of signals would cut the bridge off the bus. This one waits for the socket to
    become writable again instead (the writer stays registered with the loop until the queue is empty).
    The bridge never negotiates unix fds, so the fd-passing branch of the original is left out."""

    def buffer_message(self, msg: Any, future: Any = None) -> None:
        if future is not None:
            future.add_done_callback(_retrieve)  # nobody awaits a signal's send future
        super().buffer_message(msg, future)

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
                try:
                    self.offset += self.sock.send(self.buf[self.offset :])
                except BlockingIOError:
                    return  # socket buffer full: called again when it is writable
                if self.offset >= len(self.buf):
                    self.buf = None
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
    ) -> None:
        self._hub = hub
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
        self.connections = 0  # successful connections so far (reconnects = connections - 1)
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
            return
        if self._kind is BusKind.NONE:
            log.info("D-Bus disabled (dbus.bus = \"none\")")
            self.state = BridgeState.DISABLED
            return
        root = logging.getLogger()
        if _QUIET_CLIENT_ERRORS not in root.filters:
            root.addFilter(_QUIET_CLIENT_ERRORS)
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
        """For the daemon's `status()["bus"]`."""
        return {
            "bus": self.bus_spec,
            "state": self.state.value,
            "address": self.address,
            "name": BUS_NAME,
            "unique_name": self._bus.unique_name if self.connected and self._bus else None,
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
            self._state_changed.set()
            self._first_attempt.set()
            log.info("D-Bus: connected to %s as %s, owning %s", self.address, bus.unique_name, BUS_NAME)
            try:
                await bus.wait_for_disconnect()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - dbus-next reports a lost bus as whatever the socket raised
                self.last_error = f"connection lost: {type(e).__name__}: {e}"
            finally:
                self._connected.clear()
                self._state_changed.set()
                self._bus = None
                close_transport(bus)
            if self._stop.is_set():
                break
            self.state = BridgeState.CONNECTING
            log.warning("D-Bus: lost the bus at %s; reconnecting in the background", self.address)
            # Reconnect at once: a bus restart is usually quick, and failures back off from here.

    async def _connect_once(self) -> MessageBus:
        assert self._kind is not None
        self.address = resolve_address(self._kind, self.bus_spec)
        # dbus-next connects its socket synchronously in the constructor: a TCP peer that does not answer,
        # or a unix listener with a full backlog, would freeze the daemon's event loop. Probe in a thread
        # first, so an unreachable bus costs a worker thread, not the loop.
        await asyncio.to_thread(probe, self.address, CONNECT_TIMEOUT)
        try:
            bus = MessageBus(bus_address=self.address)
        except Exception as e:
            _close_failed_bus(e)
            raise
        bus._writer = _PatientWriter(bus)
        # If the bus dies while nobody awaits wait_for_disconnect() (e.g. during stop()), asyncio would log
        # "Future exception was never retrieved": mark it retrieved up front.
        bus._disconnect_future.add_done_callback(_retrieve)
        try:
            # A bus that accepts but never answers must not hold the loop's connection task forever.
            await asyncio.wait_for(bus.connect(), CONNECT_TIMEOUT)
            bus.export(OBJECT_PATH, self._iface)
            reply = await asyncio.wait_for(bus.request_name(BUS_NAME), CONNECT_TIMEOUT)
            if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
                # Queued behind another owner: we get the name when it leaves; signals still go out.
                log.warning("D-Bus: %s is owned by another connection; queued for it (%s)", BUS_NAME, reply.name)
        except BaseException:
            bus.disconnect()
            close_transport(bus)
            raise
        return bus

    async def _wait_stop(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    # --- events → signals ---------------------------------------------------------------------------------

    async def _pump(self, sub: Subscription) -> None:
        async for event, data in sub:
            if event == hub_events.LAGGED:
                log.warning("D-Bus: fell behind the hub and dropped %s events", data.get("missed"))
            if event in PROPERTY_TRIGGERS:
                self._schedule_flush()
            sig = signal_for(event, data)
            if sig is None or not self.connected:
                continue
            member, args = sig
            bus = self._bus
            if bus is not None and bus._writer.messages.qsize() >= MAX_WRITE_BACKLOG:
                self.dropped_signals += 1
                continue
            try:
                getattr(self._iface, member)(*args)
            except Exception:
                # A marshalling bug must not stop the bridge; the arguments are already cleaned.
                log.exception("D-Bus: could not emit %s", member)

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


__all__ = [
    "BUS_NAME",
    "INTERFACE",
    "OBJECT_PATH",
    "BridgeState",
    "BusBridge",
    "BusKind",
    "Properties",
    "clean_str",
    "parse_bus_spec",
    "resolve_address",
    "signal_for",
]
