"""`[export.nats]`: OCSF events published to a JetStream stream, each with `Nats-Msg-Id` = `metadata.uid`.

A batch is published pipelined (every message sent, then every ack awaited) and counts as delivered only when
JetStream acked every message of it; the stream's duplicate window turns a batch sent again after a crash, a
timeout or a reconnect into one copy each. `Nats-Expected-Stream` makes the server refuse a subject that lands in
another stream (or none) instead of storing it somewhere unexpected. The stream is the centre's to create
(docs/fleet.md shows how); a missing one is reported and retried, never created from a host.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .nats_link import NatsLink
from .outbox import Row, SinkError


class NatsSink:
    name = "nats"

    def __init__(self, url: str, stream: str, subject: str, *, client_name: str, credentials: str = "",
                 ack_timeout: float = 5.0) -> None:
        self.stream = stream
        self.subject = subject
        self.ack_timeout = ack_timeout
        self.link = NatsLink(url, name=client_name, credentials=credentials, purpose="export")
        self._js: Any = None
        self.published = 0
        self.duplicates = 0

    async def open(self) -> None:
        import nats.js.errors

        try:
            nc = await self.link.connect()
        except ConnectionError as exc:
            raise SinkError(str(exc)) from None
        self._js = nc.jetstream(timeout=self.ack_timeout, publish_async_max_pending=100_000)
        try:
            info = await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self.link.close()
            raise SinkError(f"the JetStream stream {self.stream!r} does not exist on {self.link.url} "
                            f"(create it with subjects matching {self.subject!r}; see docs/fleet.md)") from None
        except Exception as exc:  # noqa: BLE001 -- reported and retried
            await self.link.close()
            raise SinkError(f"cannot read stream {self.stream!r}: {type(exc).__name__}: {exc}") from None
        window = getattr(info.config, "duplicate_window", None)
        self._window = window

    async def deliver(self, rows: Sequence[Row]) -> None:
        if self._js is None:
            raise SinkError("not connected")
        if not self.link.connected.is_set():
            # While nats-py reconnects, publishes would only pile up in its buffer: wait, then fail the batch.
            try:
                await asyncio.wait_for(self.link.connected.wait(), self.ack_timeout)
            except TimeoutError:
                raise SinkError(f"NATS {self.link.url} unreachable: {self.link.last_error or 'disconnected'}",
                                until=self.link.connected) from None
        js, subject, stream = self._js, self.subject, self.stream
        futures = []
        try:
            for _, uid, event, _ in rows:
                futures.append(await js.publish_async(subject, event.encode("utf-8"), stream=stream,
                                                      headers={"Nats-Msg-Id": uid}))
            acks = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), self.ack_timeout)
        except TimeoutError:
            raise SinkError(f"JetStream did not ack {sum(not f.done() for f in futures)} of {len(rows)} events "
                            f"within {self.ack_timeout:g}s") from None
        except SinkError:
            raise
        except Exception as exc:  # noqa: BLE001 -- reported and retried
            raise SinkError(f"publish failed: {type(exc).__name__}: {exc}") from None
        finally:
            for f in futures:  # an unanswered publish must not keep its slot in nats-py's pending table
                if not f.done():
                    f.cancel()
        for ack in acks:
            if isinstance(ack, BaseException):
                raise SinkError(f"JetStream refused an event: {type(ack).__name__}: {ack}")
            if getattr(ack, "duplicate", False):
                self.duplicates += 1
        self.published += len(rows)

    async def close(self) -> None:
        self._js = None
        await self.link.close()

    def info(self) -> dict[str, Any]:
        return {"url": self.link.url, "stream": self.stream, "subject": self.subject,
                "connected": self.link.connected.is_set(), "duplicates": self.duplicates}


__all__ = ["NatsSink"]
