"""The daemon's side of the D-Bus bridge, which runs in a process of its own (`child`).

Marshalling signals and talking to the bus took about a fifth of the event loop's time in a burst; in its own
process it takes one write per batch of events. `BridgeProcess` starts the child on one end of a socketpair
and, from a hub subscription to the events that become signals or may change a property:
- forwards them as the frames the hub already encoded for the socket API (`Published.frame`: the same bytes
  a `subscribe` client gets, so a second watcher costs no second encoding);
- adds the property values (`{"props": ...}`) after each batch that may have changed them;
- reads the child's reports (`{"report": ...}`: state, whether it owns the name, the last error), which
  `status()` and desktop notifications go by, as they went by the in-process bridge's attributes.

Batches go out at most one per `model.SIGNAL_WINDOW` (`BURST_WINDOW` in a burst), as the bridge writes them.
A child that ends on its own is started again with a growing back-off; what the hub published meanwhile is
dropped, as signals are while the bus is away. `stop()` sends what is queued, the final property values and
`{"stop": drain_timeout}`; the child stops its bridge (which flushes them to the bus and waits for the bus to
have read them) and exits. The child ignores SIGINT and SIGTERM, so a Ctrl-C or the unit's stop reaches only
the daemon, which says its last words on the bus through it; when the daemon dies, the socket's end of file
stops the child.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

from sdd_client import protocol
from sdd_client.errors import ProtocolError

from sdd import hub as hub_events
from sdd.hub import EventHub, Subscription

from .address import BusKind, parse_bus_spec
from .model import BUS_NAME, PROPERTY_TRIGGERS, SIGNAL_EVENTS, SIGNAL_WINDOW, BridgeState, next_window

log = logging.getLogger("sdd.bus")

START_TIMEOUT = 10.0  # for the child's first report: interpreter start, imports, the first connection attempt
REPORT_MAX_DEPTH = 4


def child_command() -> list[str]:
    """The bridge process's command: this interpreter, without the current directory on its path (-P)."""
    return [sys.executable, "-P", "-m", "sdd.bus.child"]


def _how(code: int | None) -> str:
    """How a child ended, from its return code."""
    if code is None or code >= 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


class BridgeProcess:
    """The D-Bus bridge as a child process; same surface as `BusBridge` for the daemon. See the module doc."""

    def __init__(
        self,
        hub: EventHub,
        properties: Callable[[], Mapping[str, Any]],
        bus_spec: str,
        *,
        log_level: str = "info",
        log_target: str = "auto",
        queue_size: int = 1000,
        restart_initial: float = 1.0,
        restart_max: float = 30.0,
    ) -> None:
        self._hub = hub
        self._properties = properties  # version, state, active_runs, queued_detections (as in status())
        self.bus_spec = bus_spec
        self._log = (log_level, log_target)
        self._queue_size = queue_size
        self.restart_initial = restart_initial
        self.restart_max = restart_max
        self.state = BridgeState.STOPPED
        self.last_error: str | None = None
        self.owns_name = False
        self.report: dict[str, Any] = {}  # the child's last report, whole
        self.pid: int | None = None
        self.restarts = 0
        self._alive = False
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._drain_timeout = 1.0

    # --- the daemon's view --------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._alive and self.state is BridgeState.CONNECTED

    def info(self) -> dict[str, Any]:
        return {"bus": self.bus_spec, "state": self.state.value, "name": BUS_NAME, "owns_name": self.owns_name,
                "last_error": self.last_error, "pid": self.pid, "restarts": self.restarts,
                **{k: self.report.get(k) for k in ("address", "unique_name", "reconnects", "dropped_signals",
                                                   "sent_signals")}}

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self, first_attempt_timeout: float = 2.0) -> None:
        """Start the child; wait (at most START_TIMEOUT + `first_attempt_timeout`) for its first report, which
        comes after its first connection attempt, so that when the bus is there the name is owned by the time
        start() returns. Never raises because of the bus."""
        if self._task is not None:
            return
        try:
            kind = parse_bus_spec(self.bus_spec)
        except ValueError as e:
            log.error("D-Bus disabled: %s", e)
            self.state, self.last_error = BridgeState.DISABLED, str(e)
            return
        if kind is BusKind.NONE:
            log.info("D-Bus disabled (dbus.bus = \"none\")")
            self.state = BridgeState.DISABLED
            return
        self.state = BridgeState.CONNECTING
        self._stopping.clear()
        self._sub = self._hub.subscribe(self._queue_size, SIGNAL_EVENTS | PROPERTY_TRIGGERS)
        first = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._supervise(first), name="sdd-bus-process")
        try:
            await asyncio.wait_for(asyncio.shield(first), START_TIMEOUT + first_attempt_timeout)
        except TimeoutError:
            log.warning("D-Bus: the bridge process has not reported after %.1fs",
                        START_TIMEOUT + first_attempt_timeout)

    async def stop(self, drain_timeout: float = 1.0) -> None:
        """Send what is queued and the final property values, let the child flush them to the bus, and wait
        for it to exit (killed after about 2 x `drain_timeout` + 2 s). Idempotent."""
        self._drain_timeout = drain_timeout
        self._stopping.set()
        if self._sub is not None:
            self._sub.close()  # the pump sends what it holds, then the stop message
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), 2 * drain_timeout + 3.0)
            except TimeoutError:
                task.cancel()
                await asyncio.wait({task}, timeout=2.0)
        self._sub = None
        self._alive = False
        if self.state is not BridgeState.DISABLED:
            self.state = BridgeState.STOPPED

    async def _supervise(self, first: asyncio.Future[None]) -> None:
        delay = self.restart_initial
        while not self._stopping.is_set():
            try:
                how = await self._run_child(first)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the daemon goes on without a bus, and tries again
                how = f"{type(e).__name__}: {e}"
                log.error("D-Bus: the bridge process failed: %s", how)
            if not first.done():
                first.set_result(None)
            self._alive = False
            self.owns_name = False
            if self._stopping.is_set():
                return
            self.state = BridgeState.CONNECTING
            self.last_error = f"the bridge process ended ({how}); starting it again in {delay:g}s"
            log.error("D-Bus: %s", self.last_error)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, self.restart_max)
            self.restarts += 1
            while self._sub is not None and self._sub.take():
                pass  # what came meanwhile is not replayed

    async def _run_child(self, first: asyncio.Future[None]) -> str:
        """One child's life: start it, feed it, read it; returns how it ended."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            level, target = self._log
            proc = await asyncio.create_subprocess_exec(
                *child_command(), "--fd", str(theirs.fileno()), "--bus", self.bus_spec,
                "--log-level", level, "--log-target", target,
                stdin=asyncio.subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid = proc.pid
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        self._alive = True
        tasks = [asyncio.create_task(self._pump(writer), name="sdd-bus-feed"),
                 asyncio.create_task(self._read_reports(reader, first), name="sdd-bus-reports")]
        ended = asyncio.create_task(proc.wait())
        try:
            await asyncio.wait({ended, tasks[0]}, return_when=asyncio.FIRST_COMPLETED)
            if not ended.done():  # the pump sent the stop message (or lost the socket): the child exits
                try:
                    await asyncio.wait_for(asyncio.shield(ended), 2 * self._drain_timeout + 2.0)
                except TimeoutError:
                    log.warning("D-Bus: the bridge process did not exit; killing it")
                    proc.kill()
                    await ended
            await asyncio.wait({tasks[1]}, timeout=1.0)  # its last report
        finally:
            for task in (*tasks, ended):
                task.cancel()
            await asyncio.wait({*tasks, ended}, timeout=1.0)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            writer.close()
        return _how(proc.returncode)

    async def _pump(self, writer: asyncio.StreamWriter) -> None:
        sub = self._sub
        assert sub is not None
        props = protocol.encode({"props": dict(self._properties())})
        writer.write(props)
        window = SIGNAL_WINDOW
        try:
            while (batch := await sub.batch(window)) is not None:
                window = next_window(len(batch))
                if batch[0].name == hub_events.LAGGED:
                    log.warning("D-Bus: fell behind the hub and dropped %s events", batch[0].data.get("missed"))
                frames = [frame for event in batch if event.name in SIGNAL_EVENTS and (frame := event.frame())]
                if any(event.name in PROPERTY_TRIGGERS for event in batch):
                    frames.append(protocol.encode({"props": dict(self._properties())}))
                if frames:
                    writer.write(b"".join(frames))
                    await writer.drain()
            writer.write(protocol.encode({"props": dict(self._properties())})
                         + protocol.encode({"stop": self._drain_timeout}))
            await writer.drain()
        except (ConnectionError, OSError) as e:
            log.debug("D-Bus: the bridge process's socket closed: %s", e)

    async def _read_reports(self, reader: asyncio.StreamReader, first: asyncio.Future[None]) -> None:
        try:
            while (message := await protocol.read_message(reader, max_depth=REPORT_MAX_DEPTH)) is not None:
                report = message.get("report")
                if not isinstance(report, dict):
                    continue
                self.report = report
                try:
                    self.state = BridgeState(report.get("state"))
                except ValueError:
                    self.state = BridgeState.CONNECTING
                self.owns_name = bool(report.get("owns_name"))
                error = report.get("last_error")
                self.last_error = str(error) if error is not None else None
                if report.get("first_attempt") and not first.done():
                    first.set_result(None)
        except (ConnectionError, OSError, ProtocolError) as e:
            log.debug("D-Bus: reading the bridge process's reports: %s", e)
