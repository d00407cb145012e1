"""`[intake.nats]`: detections pushed from the centre — a JetStream durable pull consumer on this host's subject.

Each message body is one detection, exactly as a spool file (the same `parse_detection` judges it). A message is
acked only after the detection is durably committed through the daemon's own commit path (`submit_detection`,
the one `detections.submit` uses), so a console can send a host work that it will not lose while the host is
offline, restarting or crashing: unacked messages are delivered again, and the same message again (same stream
sequence, same bytes: recorded as its `spool_name`) is recognised as a replay and runs once.

A hostile message (not UTF-8, not JSON, no `type`, too large, rejected by the store) is recorded as an audit row
with its reason, announced as `detection.rejected`, and terminated (`+TERM`) so it is never redelivered — the
spool's `rejected/` + `.reason`, for a bus. While the daemon's queue is full (back-pressure), nothing is fetched;
while it stops, fetched messages are left unacked for the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .. import hub as events
from ..errors import InvalidRequest, NotAccepting
from ..intake.spool import SpoolRejection, parse_detection
from ..logging import kv
from .nats_link import NatsLink

log = logging.getLogger("sdd.fleet")

FETCH_BATCH = 64
FETCH_WAIT = 5.0


class NatsIntake:
    def __init__(self, url: str, stream: str, subject: str, durable: str, *, client_name: str,
                 submit: Callable[..., Awaitable[Any]], paused: Callable[[], bool],
                 publish: Callable[[str, dict[str, Any]], None], store: Any, credentials: str = "",
                 max_size: int = 1024 * 1024) -> None:
        self.stream = stream
        self.subject = subject
        self.durable = durable
        self.link = NatsLink(url, name=client_name, credentials=credentials, purpose="intake")
        self.submit = submit
        self.paused = paused
        self.publish = publish
        self.store = store
        self.max_size = max_size
        self.state = "starting"
        self.counts = {"accepted": 0, "replayed": 0, "duplicate": 0, "rejected": 0}
        self.last_error = ""
        self._stopping = False
        self._sub: Any = None
        self.on_rejected: Callable[[], None] | None = None  # for the metrics (accepted ones are counted by the
        # dispatcher, where every source is)

    async def run(self) -> None:
        delay = 0.5
        while not self._stopping:
            try:
                if self._sub is None:
                    await self._subscribe()
                    delay = 0.5
                await self._fetch_and_handle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 -- retried, never fatal
                if self._stopping:
                    return
                text = f"{type(exc).__name__}: {exc}"
                if text != self.last_error:
                    log.warning("nats intake unavailable; retrying", extra=kv(stream=self.stream, error=text,
                                                                             retry_in=delay))
                self.state, self.last_error = "down", text
                self._sub = None
                await self.link.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)

    async def _subscribe(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig

        nc = await self.link.connect()
        js = nc.jetstream(timeout=5.0)
        # Binds to the durable consumer (created by the centre with its own ack_wait/max_deliver), or creates it.
        self._sub = await js.pull_subscribe(self.subject, durable=self.durable, stream=self.stream,
                                            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT,
                                                                  filter_subject=self.subject))
        self.state = "up"
        self.last_error = ""
        log.info("nats intake subscribed", extra=kv(stream=self.stream, subject=self.subject, durable=self.durable))

    async def _fetch_and_handle(self) -> None:
        import nats.errors

        while self.paused() and not self._stopping:
            await asyncio.sleep(0.2)  # back-pressure: the daemon's queue is full
        if self._stopping:
            return
        try:
            msgs = await self._sub.fetch(FETCH_BATCH, timeout=FETCH_WAIT)
        except (TimeoutError, nats.errors.TimeoutError):
            return
        for msg in msgs:
            if self._stopping:
                return  # left unacked: delivered again at the next start
            await self.handle(msg)

    async def handle(self, msg: Any) -> str:
        """One message: committed then acked, or rejected (recorded) then terminated. Returns the outcome."""
        seq = getattr(getattr(msg, "metadata", None), "sequence", None)
        name = f"nats:{self.stream}:{getattr(seq, 'stream', '?')}"
        data = msg.data or b""
        try:
            if len(data) > self.max_size:
                raise SpoolRejection(f"message larger than {self.max_size} bytes")
            detection = parse_detection(data)
            result = await self.submit(detection, None, spool_name=name, source="nats")
        except (SpoolRejection, InvalidRequest) as exc:
            await self._reject(msg, name, str(exc))
            return "rejected"
        except NotAccepting:
            self._stopping = True
            return "stopping"  # not acked: delivered again at the next start
        except Exception as exc:  # noqa: BLE001 -- the database is failing: leave it for redelivery
            log.error("nats intake: cannot record a detection; it will be delivered again",
                      extra=kv(name=name, error=exc))
            await _quietly(msg.nak(delay=5.0))
            return "failed"
        await msg.ack()
        outcome = "duplicate" if result.get("duplicate_of") else "accepted"
        self.counts[outcome] += 1
        return outcome

    async def _reject(self, msg: Any, name: str, reason: str) -> None:
        log.warning("pushed detection rejected", extra=kv(name=name, reason=reason))
        try:
            await self.store.audit(None, "intake.nats", name, outcome="rejected", details={"reason": reason})
        except Exception as exc:  # noqa: BLE001 -- the reason is logged either way
            log.error("nats intake: cannot record a rejection", extra=kv(name=name, error=exc))
        self.publish(events.DETECTION_REJECTED, {"name": name, "reason": reason})
        self.counts["rejected"] += 1
        if self.on_rejected is not None:
            self.on_rejected()
        await msg.term()  # never redelivered

    async def stop(self) -> None:
        self._stopping = True
        await self.link.close()

    def info(self) -> dict[str, Any]:
        return {"state": self.state, "stream": self.stream, "subject": self.subject, "durable": self.durable,
                "last_error": self.last_error, **self.counts}


async def _quietly(aw: Awaitable[Any]) -> None:
    try:
        await aw
    except Exception as exc:  # noqa: BLE001 -- a nak that cannot be sent: ack_wait redelivers it anyway
        log.debug("nats intake: nak failed", extra=kv(error=exc))


__all__ = ["NatsIntake"]
