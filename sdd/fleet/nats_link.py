"""The NATS connection as sdd uses it (nats-py): connect with reconnects forever, quiet callbacks that log once per
state change, and the `{host}` token of subjects and consumer names.

Both NATS parts (the export sink and the pushed-detection intake) use this; nats-py is an optional dependency
(`pip install 'sdd[fleet]'`), imported only when a `[export.nats]` or `[intake.nats]` section is present.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from typing import Any

from ..logging import kv

log = logging.getLogger("sdd.fleet")

_TOKEN_BAD = re.compile(r"[^A-Za-z0-9_-]")


def hostname() -> str:
    """The name this host goes by in events and subjects: `$SDD_HOSTNAME` (two daemons playing two hosts on one
    machine, containers), else the kernel's hostname."""
    return os.environ.get("SDD_HOSTNAME") or socket.gethostname()


def host_token(name: str) -> str:
    """`name` as one subject token and a valid stream/consumer name: every character other than letters,
    digits, '-' and '_' (dots above all, which would split the subject) becomes '_'."""
    return _TOKEN_BAD.sub("_", name) or "_"


def expand(template: str, host: str) -> str:
    return template.replace("{host}", host_token(host))


class NatsLink:
    """One NATS connection. `connected` is an asyncio.Event that is set while the connection is up."""

    def __init__(self, url: str, *, name: str, credentials: str = "", purpose: str = "nats") -> None:
        self.url = url
        self.name = name
        self.credentials = credentials
        self.purpose = purpose
        self.nc: Any = None
        self.connected = asyncio.Event()
        self.last_error = ""

    async def connect(self, timeout: float = 3.0) -> Any:
        import nats  # optional dependency: only a configured NATS section imports it

        if self.nc is not None and not self.nc.is_closed:
            return self.nc
        options: dict[str, Any] = {
            "servers": [self.url], "name": self.name, "allow_reconnect": True, "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5, "connect_timeout": timeout, "ping_interval": 10,
            "max_outstanding_pings": 2, "error_cb": self._error, "disconnected_cb": self._disconnected,
            "reconnected_cb": self._reconnected, "closed_cb": self._closed}
        if self.credentials:
            options["user_credentials"] = self.credentials
        try:
            self.nc = await asyncio.wait_for(nats.connect(**options), timeout + 1.0)
        except Exception as exc:  # noqa: BLE001 -- whatever it is, the caller retries
            self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise ConnectionError(f"cannot connect to {self.url}: {self.last_error}") from None
        self.connected.set()
        return self.nc

    async def close(self) -> None:
        nc, self.nc = self.nc, None
        self.connected.clear()
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), 5)
            except Exception as exc:  # noqa: BLE001
                log.debug("nats close failed", extra=kv(error=exc))

    async def _error(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if text != self.last_error:
            log.debug("nats error", extra=kv(purpose=self.purpose, url=self.url, error=text))
        self.last_error = text

    async def _disconnected(self) -> None:
        if self.connected.is_set():
            log.warning("nats disconnected; reconnecting", extra=kv(purpose=self.purpose, url=self.url))
        self.connected.clear()

    async def _reconnected(self) -> None:
        log.info("nats reconnected", extra=kv(purpose=self.purpose, url=self.url))
        self.connected.set()

    async def _closed(self) -> None:
        self.connected.clear()


__all__ = ["NatsLink", "expand", "host_token", "hostname"]
