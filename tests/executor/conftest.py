"""A real executor server on a real Unix socket, and a raw client that speaks its frames by hand."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sdd_client.protocol import encode, read_message

from sdd.executor import ExecutorServer, Policy
from tests.support.trusted import traversable_tmpdir, trusted_dir

from ..actions.procs import procs  # noqa: F401  (fixture)


@dataclass
class Raw:
    """One connection to the executor; `call` answers `ready` with `go` and returns the final message."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    next_id: int = 1

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(encode(message, 1 << 20))

    async def recv(self) -> dict[str, Any] | None:
        return await asyncio.wait_for(read_message(self.reader, 1 << 20), 30)

    async def call(self, op: str, go: bool = True, **args: Any) -> dict[str, Any]:
        rid, self.next_id = self.next_id, self.next_id + 1
        self.send({"id": rid, "op": op, "args": args})
        while True:
            msg = await self.recv()
            assert msg is not None, "the executor closed the connection"
            if msg.get("ready"):
                self.send({"id": rid, "go": go})
                continue
            return msg

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@dataclass
class Box:
    tmp: Path
    root: Path      # the one allowed root
    outside: Path
    vault: Path
    scripts: Path
    socket: Path
    server: ExecutorServer

    async def connect(self) -> Raw:
        reader, writer = await asyncio.open_unix_connection(str(self.socket), limit=1 << 21)
        return Raw(reader, writer)


@pytest.fixture
def tmp_public() -> Iterator[Path]:
    """A directory other uids can reach (pytest's tmp_path is root's 0700)."""
    with traversable_tmpdir("sddx-", 0o755) as d:
        yield d


@pytest.fixture
async def box(tmp_public: Path) -> AsyncIterator[Box]:
    root, outside, state = tmp_public / "root", tmp_public / "outside", tmp_public / "state"
    for d in (root, outside, state):
        d.mkdir()
    scripts = trusted_dir("scripts")
    policy = Policy.build([root], state / "vault", protected_processes=(), scripts_dir=scripts)
    server = ExecutorServer(policy, allowed_uid=os.geteuid())
    path = tmp_public / "executor.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o666)  # reachable by anyone: the uid check is what refuses them
    sock.listen(8)
    await server.start(sock)
    try:
        yield Box(tmp_public, root, outside, state / "vault", scripts, path, server)
    finally:
        await server.close()
