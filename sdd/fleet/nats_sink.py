"""`[export.nats]`: OCSF events published to a JetStream stream, each with `Nats-Msg-Id` = `metadata.uid`.

A batch is published pipelined (every message sent with its own reply subject, then every ack awaited) and counts as delivered only when
JetStream acked every message of it; the stream's duplicate window turns a batch sent again after a crash, a
timeout or a reconnect into one copy each. `Nats-Expected-Stream` makes the server refuse a subject that lands in
another stream (or none) instead of storing it somewhere unexpected. The stream is the centre's to create
(docs/fleet.md shows how); a missing one is reported and retried, never created from a host.
"""

from __future__ import annotations

import asyncio
import json
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
        self._prefix = ""
        self._batch = 0
        self._waiting: set[str] = set()
        self._errors: list[str] = []
        self._done = asyncio.Event()
        self.published = 0
        self.duplicates = 0

    async def open(self) -> None:
        import nats.js.errors

        try:
            nc = await self.link.connect()
        except ConnectionError as exc:
            raise SinkError(str(exc)) from None
        self._js = nc.jetstream(timeout=self.ack_timeout)
        try:
            info = await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self.link.close()
            raise SinkError(f"the JetStream stream {self.stream!r} does not exist on {self.link.url} "
                            f"(create it with subjects matching {self.subject!r}; see docs/fleet.md)") from None
        except Exception as exc:  # noqa: BLE001 -- reported and retried
            await self.link.close()
            raise SinkError(f"cannot read stream {self.stream!r}: {type(exc).__name__}: {exc}") from None
        self._window = getattr(info.config, "duplicate_window", None)
        # Acks come back on one wildcard subscription of our own inbox (the pipelining of publish_async,
        # without its per-message futures).
        self._prefix = nc.new_inbox() + "."
        await nc.subscribe(self._prefix + "*", cb=self._on_ack)

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
        nc, subject, prefix = self.link.nc, self.subject, self._prefix
        self._batch += 1
        batch = f"{self._batch}-"
        waiting = self._waiting = {f"{batch}{i}" for i in range(len(rows))}
        self._errors = []
        self._done = asyncio.Event()
        try:
            for i, (_, uid, event, _) in enumerate(rows):
                await nc.publish(subject, event.encode("utf-8"), reply=f"{prefix}{batch}{i}",
                                 headers={"Nats-Msg-Id": uid, "Nats-Expected-Stream": self.stream})
            await asyncio.wait_for(self._done.wait(), self.ack_timeout)
        except TimeoutError:
            raise SinkError(f"JetStream did not ack {len(waiting)} of {len(rows)} events within "
                            f"{self.ack_timeout:g}s") from None
        except Exception as exc:  # noqa: BLE001 -- reported and retried
            raise SinkError(f"publish failed: {type(exc).__name__}: {exc}") from None
        finally:
            self._waiting = set()
        if self._errors:
            raise SinkError(f"JetStream refused {len(self._errors)} of {len(rows)} events: {self._errors[0]}")
        self.published += len(rows)

    async def _on_ack(self, msg: Any) -> None:
        """One JetStream PubAck (or error) for a message of the batch in flight: no future, no dataclass per
        message, and the JSON parsed only for an error."""
        token = msg.subject[len(self._prefix):]
        waiting = self._waiting
        if token not in waiting:
            return  # late: an earlier batch that timed out (sent again, and deduplicated)
        waiting.discard(token)
        data = msg.data
        if msg.headers and msg.headers.get("Status") == "503":
            self._errors.append(f"no stream takes {self.subject!r} (503 no responders)")
        elif b'"error"' in data:
            try:
                self._errors.append(str(json.loads(data)["error"].get("description")))
            except (ValueError, KeyError, AttributeError):
                self._errors.append(data[:200].decode("utf-8", "replace"))
        elif b'"duplicate":true' in data:
            self.duplicates += 1
        if not waiting:
            self._done.set()

    async def close(self) -> None:
        self._js = None
        await self.link.close()

    def info(self) -> dict[str, Any]:
        return {"url": self.link.url, "stream": self.stream, "subject": self.subject,
                "connected": self.link.connected.is_set(), "duplicates": self.duplicates}


__all__ = ["NatsSink"]
