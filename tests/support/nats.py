"""A real `nats-server -js` for tests: on 127.0.0.1, a free port, a temporary store directory; restartable on the
same port and store (a NATS outage and return), stopped at teardown.

    with NatsServer(tmp_path) as ns:
        ns.url            # nats://127.0.0.1:PORT
        ns.restart()      # SIGTERM, wait, start again with the same JetStream store
        ns.stop(); ns.start()

`js_call(url, fn)` runs `await fn(nc, js)` on a fresh nats-py connection (for a test's own stream setup and reads).
Tests skip when `nats-server` or nats-py is missing (tests/system-deps.sh installs the server).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def require_nats() -> None:
    if not Path(NATS_SERVER).exists():
        pytest.skip("nats-server is not installed (tests/system-deps.sh)")
    pytest.importorskip("nats")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    def __init__(self, tmp_path: Path, *, port: int | None = None) -> None:
        require_nats()
        self.dir = Path(tmp_path) / "nats"
        self.store_dir = self.dir / "js"
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.log_file = self.dir / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> NatsServer:
        argv = [NATS_SERVER, "-js", "-sd", str(self.store_dir), "-a", "127.0.0.1", "-p", str(self.port),
                "-n", "sdd-test"]
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:  # ready when it accepts a client and says INFO (JetStream is up by then)
            if self.proc.poll() is not None:
                raise AssertionError(f"nats-server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4096).startswith(b"INFO"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"nats-server not ready within {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""

    def __enter__(self) -> NatsServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def js_call(url: str, fn: Callable[[Any, Any], Awaitable[Any]], timeout: float = 60.0) -> Any:
    """Runs `await fn(nc, js)` on a new connection to `url` (in a new event loop), then closes it."""
    import nats

    async def main() -> Any:
        nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        try:
            return await fn(nc, nc.jetstream(timeout=10))
        finally:
            await nc.close()
    return asyncio.run(asyncio.wait_for(main(), timeout))


def add_stream(url: str, name: str, subjects: list[str], **config: Any) -> None:
    async def add(nc: Any, js: Any) -> None:
        await js.add_stream(name=name, subjects=subjects, **config)
    js_call(url, add)


def stream_messages(url: str, stream: str) -> list[Any]:
    """Every message in `stream`, in order (by reading it with direct gets: no consumer left behind)."""
    import nats.js.errors

    async def read(nc: Any, js: Any) -> list[Any]:
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            try:
                out.append(await js.get_msg(stream, seq))
            except nats.js.errors.NotFoundError:  # a deleted sequence
                pass
        return out
    return js_call(url, read)
