"""Prometheus metrics (prometheus-client): over HTTP on `[metrics] listen` and/or written atomically to a
node_exporter textfile (`[metrics] textfile`), from a registry of this daemon's own (never the global one).

Counters follow the engine's events and the intake's outcomes:
- `sdd_detections_total{source,outcome}` — source `spool` | `api` | `nats`; outcome `accepted` | `duplicate` |
  `rejected` (rejections of `detections.submit` are the caller's error and not counted);
- `sdd_runs_total{workflow,status}` — finished runs, dry runs excepted: it starts from `runs.stats` when the
  daemon starts, so the two agree across restarts (a retention purge lowers `runs.stats`, never a counter);
- `sdd_step_duration_seconds{action}` (histogram), `sdd_guard_refusals_total{action}`.
Gauges are read when scraped: `sdd_spool_depth` (files in `new/`), `sdd_quarantine_items`, `sdd_outbox_depth{sink}`,
`sdd_outbox_dropped_total`, `sdd_active_runs`, `sdd_queued_detections`, `sdd_run_slots{state}` and
`sdd_run_slots_limit`, `sdd_scans{state}`, `sdd_up`, `sdd_build_info{version}`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from ..config import MetricsConfig, listen_address
from ..engine.events import EngineEvent, RunFinished, RunStarted, StepFinished, StepStarted
from ..logging import kv
from .ocsf import guard_refusal

log = logging.getLogger("sdd.fleet")

_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    def __init__(self, config: MetricsConfig, *, version: str, spool_new: str, store: Any,
                 gauges: Callable[[], dict[str, Any]]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.config = config
        self.version = version
        self.spool_new = spool_new
        self.store = store
        self.gauges = gauges  # active_runs, queued_detections, outbox {sink: depth}, dropped
        self.registry = CollectorRegistry(auto_describe=False)
        self.detections = Counter("sdd_detections", "Detections received, by source and outcome.",
                                  ["source", "outcome"], registry=self.registry)
        self.runs = Counter("sdd_runs", "Finished runs (dry runs excepted), by workflow and final status.",
                            ["workflow", "status"], registry=self.registry)
        self.step_duration = Histogram("sdd_step_duration_seconds", "Duration of finished steps, by action.",
                                       ["action"], buckets=_BUCKETS, registry=self.registry)
        self.guard_refusals = Counter("sdd_guard_refusals", "Steps refused by a guard (rate limit, circuit "
                                      "breaker, safety rule), by action.", ["action"], registry=self.registry)
        self.registry.register(_Gauges(self))
        self._actions: dict[tuple[str, str, str], str | None] = {}
        self._dry: set[str] = set()
        self._server: Any = None
        self._thread: Any = None

    # --- counting ------------------------------------------------------------------------------------------
    def seed_runs(self) -> None:
        """Start sdd_runs_total where runs.stats is, so a scrape after a restart still matches it."""
        for row in self.store.run_stats():
            for status in ("completed", "failed", "rolled_back", "cancelled", "interrupted"):
                if row.get(status):
                    self.runs.labels(row["workflow_id"], status).inc(row[status])

    def detection(self, source: str, outcome: str) -> None:
        self.detections.labels(source, outcome).inc()

    def on_engine_event(self, ev: EngineEvent) -> None:
        """An engine listener (synchronous, cheap)."""
        if type(ev) is StepStarted:
            self._actions[(ev.run_id, ev.phase, ev.step_id)] = ev.action if ev.attempt else None
        elif type(ev) is StepFinished:
            action = self._actions.pop((ev.run_id, ev.phase, ev.step_id), None)
            if action is None:
                return
            if ev.status != "skipped" and ev.run_id not in self._dry:
                self.step_duration.labels(action).observe(max(0.0, ev.finished_at - ev.started_at))
            if ev.status == "failed" and guard_refusal(ev.error):
                self.guard_refusals.labels(action).inc()
        elif type(ev) is RunStarted:
            if ev.dry_run:
                self._dry.add(ev.run_id)
        elif type(ev) is RunFinished:
            if ev.run_id in self._dry:
                self._dry.discard(ev.run_id)
            else:
                self.runs.labels(ev.workflow_id, str(ev.status)).inc()
            if self._actions:  # steps that never reported an outcome
                for key in [k for k in self._actions if k[0] == ev.run_id]:
                    del self._actions[key]

    # --- exposing --------------------------------------------------------------------------------------------
    def start(self) -> None:
        from prometheus_client import start_http_server

        if self.config.listen:
            host, port = listen_address(self.config.listen)
            started = start_http_server(port, addr=host, registry=self.registry)
            if isinstance(started, tuple):
                self._server, self._thread = started
            log.info("metrics listening", extra=kv(listen=self.config.listen))

    async def textfile_loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.write_textfile)
            except Exception as exc:  # noqa: BLE001 -- the next write may succeed
                log.warning("metrics textfile not written", extra=kv(path=self.config.textfile, error=exc))
            await asyncio.sleep(self.config.textfile_interval)

    def write_textfile(self) -> None:
        """Atomically (a temporary file renamed over it), so node_exporter never reads half a file."""
        from prometheus_client import write_to_textfile

        write_to_textfile(self.config.textfile, self.registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.config.textfile:
            try:
                self.write_textfile()  # the last word: sdd_up 0 is not said (a missing daemon is stale data)
            except Exception as exc:  # noqa: BLE001
                log.debug("metrics textfile not written at stop", extra=kv(error=exc))


class _Gauges:
    """The gauges, read at scrape time (from the scraping thread: only reads of plain values and the store)."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.m
        yield GaugeMetricFamily("sdd_up", "1 while the daemon runs.", value=1)
        info = GaugeMetricFamily("sdd_build_info", "The running sdd's version.", labels=["version"])
        info.add_metric([m.version], 1)
        yield info
        try:
            with os.scandir(m.spool_new) as it:
                depth = sum(1 for _ in it)
        except OSError:
            depth = 0
        yield GaugeMetricFamily("sdd_spool_depth", "Detection files waiting in the spool's new/.", value=depth)
        try:
            quarantined = m.store.counts().get("quarantined", 0)
        except Exception:  # noqa: BLE001 -- a scrape must answer
            quarantined = 0
        yield GaugeMetricFamily("sdd_quarantine_items", "Files held in the quarantine vault.", value=quarantined)
        g = m.gauges()
        outbox = GaugeMetricFamily("sdd_outbox_depth", "Exported events waiting for a sink.", labels=["sink"])
        for sink, n in g.get("outbox", {}).items():
            outbox.add_metric([sink], n)
        yield outbox
        yield CounterMetricFamily("sdd_outbox_dropped", "Exported events dropped because the outbox was full.",
                                  value=g.get("dropped", 0))
        yield GaugeMetricFamily("sdd_active_runs", "Runs in progress.", value=g.get("active_runs", 0))
        yield GaugeMetricFamily("sdd_queued_detections", "Detections committed and waiting for a run.",
                                value=g.get("queued_detections", 0))
        slots = g.get("run_slots") or {}
        if slots:
            yield GaugeMetricFamily("sdd_run_slots_limit", "engine.max_concurrent_runs.", value=slots["limit"])
            runs = GaugeMetricFamily("sdd_run_slots", "Active runs: counted against the limit (busy), or lending "
                                     "their slot while they wait.", labels=["state"])
            for state in ("busy", "held_by_guard", "waiting_elsewhere", "recording"):
                runs.add_metric([state], slots[state])
            yield runs
        scans = g.get("scans") or {}
        if scans:
            family = GaugeMetricFamily("sdd_scans", "run_scan steps scanning, and waiting for a place among the "
                                       "scans at once.", labels=["state"])
            for state in ("running", "waiting"):
                family.add_metric([state], scans[state])
            yield family


__all__ = ["Metrics"]
