"""`Fleet`: what connects one sdd to the systems a fleet already runs, as one part the daemon starts and stops.

- the export outbox's sinks (`[export] ocsf_file`, `[export.nats]`), attached to the store before anything is
  recorded, each drained by its own task;
- detections pushed from the centre (`[intake.nats]`), started once the daemon dispatches;
- Prometheus metrics (`[metrics] listen` / `textfile`).
Each part is optional, fails alone and never stops the daemon: a sink that is down keeps its events in the
outbox; an intake that cannot connect retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..logging import kv
from .nats_link import expand, hostname
from .ocsf import OcsfMapper
from .outbox import Drain, DrainThread, FileSink, Sink

if TYPE_CHECKING:
    from ..dispatch.dispatcher import Dispatcher
    from ..engine import WorkflowEngine

log = logging.getLogger("sdd.fleet")

Spawn = Callable[[Awaitable[Any], str], Any]


class Fleet:
    def __init__(self, config: Config, version: str) -> None:
        self.config = config
        self.version = version
        self.host = hostname()
        self.drains: list[Drain] = []
        self.intake: Any = None
        self.metrics: Any = None
        self._store: Any = None
        self._threads: list[DrainThread] = []

    # --- export ---------------------------------------------------------------------------------------------
    def make_sinks(self) -> list[Sink]:
        ex = self.config.export
        sinks: list[Sink] = []
        if ex.ocsf_file:
            sinks.append(FileSink(ex.ocsf_file, ex.ocsf_file_max_bytes, ex.ocsf_file_keep))
        if ex.nats is not None:
            from .nats_sink import NatsSink

            sinks.append(NatsSink(ex.nats.url, expand(ex.nats.stream, self.host),
                                  expand(ex.nats.subject, self.host), client_name=f"sdd export {self.host}",
                                  credentials=ex.nats.credentials))
        return sinks

    async def attach(self, store: Any, spawn: Spawn) -> None:
        """Before the first history write: the store exports from now on; one drain task per sink."""
        self._store = store
        sinks = self.make_sinks()
        self.drains = [Drain(store, s) for s in sinks]
        mapper = OcsfMapper(self.host, self.version) if sinks else None
        await store.enable_outbox(mapper, tuple(s.name for s in sinks), self.config.export.outbox_max_events,
                                  on_commit=self._wake_drains)
        self._threads = [DrainThread(d) for d in self.drains]
        for thread in self._threads:
            thread.start()
        if sinks:
            log.info("exporting OCSF events", extra=kv(sinks=",".join(s.name for s in sinks), host=self.host))

    def _wake_drains(self) -> None:
        for drain in self.drains:
            drain.wake_threadsafe()

    # --- metrics ----------------------------------------------------------------------------------------------
    def observe(self, engine: WorkflowEngine, dispatcher: Dispatcher, spawn: Spawn,
                scans: Callable[[], dict[str, int]] | None = None) -> None:
        """Once the engine exists and before any run: the metrics count from here (seeded from runs.stats).
        `scans`: the scans running and waiting, as `status` shows them."""
        mc = self.config.metrics
        if not (mc.listen or mc.textfile):
            return
        from .metrics import Metrics

        def gauges() -> dict[str, Any]:
            status = self.status()
            return {"active_runs": len(engine.active_runs), "queued_detections": dispatcher.queued,
                    "outbox": {name: s["depth"] for name, s in status["sinks"].items()},
                    "dropped": status["dropped"], "run_slots": dispatcher.slots(),
                    "scans": scans() if scans is not None else {}}
        try:
            metrics = Metrics(mc, version=self.version, spool_new=str(self.config.paths.spool / "new"),
                              store=self._store, gauges=gauges)
            metrics.seed_runs()
            metrics.start()
        except Exception as exc:  # noqa: BLE001 -- the daemon runs without metrics rather than not at all
            log.error("metrics not available", extra=kv(error=exc, listen=mc.listen))
            return
        self.metrics = metrics
        engine.add_listener(metrics.on_engine_event)
        dispatcher.on_detection = metrics.detection
        if mc.textfile:
            spawn(metrics.textfile_loop(), "metrics-textfile")

    # --- intake ------------------------------------------------------------------------------------------------
    async def start(self, spawn: Spawn, *, submit: Callable[..., Awaitable[Any]], paused: Callable[[], bool],
                    publish: Callable[[str, dict[str, Any]], None]) -> None:
        """Once the daemon dispatches: the pushed-detection intake."""
        nats_in = self.config.intake.nats
        if nats_in is not None:
            from .nats_intake import NatsIntake

            self.intake = NatsIntake(nats_in.url, expand(nats_in.stream, self.host),
                                     expand(nats_in.subject, self.host), expand(nats_in.durable, self.host),
                                     credentials=nats_in.credentials, client_name=f"sdd intake {self.host}",
                                     submit=submit, paused=paused, publish=publish, store=self._store,
                                     max_size=self.config.intake.max_file_size)
            metrics = self.metrics
            if metrics is not None:
                self.intake.on_rejected = lambda: metrics.detection("nats", "rejected")
            spawn(self.intake.run(), "intake-nats")

    async def stop_intake(self) -> None:
        if self.intake is not None:
            await self.intake.stop()

    async def close(self, flush_timeout: float = 5.0) -> None:
        """At shutdown, after the last history write: one bounded last delivery, then the sinks close."""
        await self.stop_intake()
        if self._store is not None:
            try:
                await self._store.flush()
            except Exception as exc:  # noqa: BLE001 -- the store may be gone already
                log.debug("store flush before the last delivery failed", extra=kv(error=exc))
        threads, self._threads = self._threads, []
        await asyncio.gather(*(t.stop(flush_timeout) for t in threads), return_exceptions=True)
        if self.metrics is not None:
            self.metrics.stop()

    # --- status ------------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """For `status`: per sink its depth (events waiting) and state; the drops; the intake's counters."""
        out: dict[str, Any] = {"host": self.host, "sinks": {}, "dropped": 0}
        if self._store is not None and self.drains:
            try:
                depths = self._store.outbox_depths()
            except Exception as exc:  # noqa: BLE001 -- status must answer
                depths = {"sinks": {}, "dropped": 0, "error": str(exc)}
            out["dropped"] = depths.get("dropped", 0)
            for drain in self.drains:
                out["sinks"][drain.sink.name] = {"depth": depths["sinks"].get(drain.sink.name, 0), **drain.info()}
        if self.intake is not None:
            out["intake"] = self.intake.info()
        return out


__all__ = ["Fleet"]
