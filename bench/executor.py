"""The cost of the privilege boundary: each executor primitive called in-process (user mode) and over the
executor's Unix socket to a server in another process (system mode), same requests, same checks.

`overhead_p50_ms` = socket p50 - in-process p50 per primitive (issue 12's target: <= 0.3 ms). The
primitives are kept cheap so that the crossing is what is measured: a lookup, a delete of an absent file,
a quarantine + restore of a 4 KiB file, a kill of a process that is already gone, a trivial script.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdd.executor import (
    Delete,
    InProcessExecutor,
    Kill,
    Lookup,
    Policy,
    PrimitiveError,
    Quarantine,
    Restore,
    RunScript,
    SocketExecutor,
)

N = 100
ROUNDS = 3
SERVER = """
import asyncio, os, socket, sys
from sdd.executor import ExecutorServer, Policy
sock = socket.socket(fileno=int(sys.argv[1]))
policy = Policy.build([sys.argv[2]], sys.argv[3], scripts_dir=sys.argv[4], user_mode=True)
async def main():
    await ExecutorServer(policy, allowed_uid=os.geteuid()).start(sock)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 4)


async def _time(call: Callable[[int], Any], n: int = N) -> dict[str, float]:
    times = []
    for i in range(n):
        t = time.perf_counter()
        await call(i)
        times.append(time.perf_counter() - t)
    return {"p50_ms": _p(times, 0.5), "p99_ms": _p(times, 0.99), "mean_ms": round(statistics.fmean(times) * 1000, 4)}


async def _primitives(executor: Any, root: Path, scripts: Path, gone_pid: int, tag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["lookup_missing"] = await _time(lambda i: _expect_error(executor.call(Lookup(path=f"{root}/none{i}"))))
    out["delete_absent"] = await _time(lambda i: executor.call(Delete(f"{root}/absent{i}")))

    async def quarantine_restore(i: int) -> None:
        path = root / f"{tag}{i}.exe"
        path.write_bytes(os.urandom(4096))
        done = await executor.call(Quarantine(str(path)))
        await executor.call(Restore(done.value["meta"]["quarantine_id"]))
    out["quarantine_restore_4k"] = await _time(quarantine_restore, N // 3)
    out["kill_gone"] = await _time(lambda i: executor.call(Kill(pid=gone_pid, trust=True, start_time=0.0)))
    out["run_script_true"] = await _time(lambda i: executor.call(RunScript(str(scripts / "true.sh"))), N // 10)
    return out


def _merge(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per primitive, the median of the rounds' figures."""
    return {k: {m: round(statistics.median(r[k][m] for r in rounds), 4) for m in rounds[0][k]} for k in rounds[0]}


async def _expect_error(aw: Any) -> None:
    with contextlib.suppress(PrimitiveError):  # the not-found answer is what is timed
        await aw


async def _bench(tmp: Path, root: Path, scripts: Path, gone_pid: int) -> dict[str, Any]:
    # Each side its own vault, so both start from the same (empty) one.
    # Interleaved rounds (in-process, socket, in-process, ...), so a noisy moment hits both alike.
    policy = Policy.build([root], tmp / "vault-a", scripts_dir=scripts, user_mode=True)
    local = InProcessExecutor(policy)
    client = SocketExecutor(str(tmp / "executor.sock"))
    rounds: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    try:
        for r in range(ROUNDS):
            rounds["a"].append(await _primitives(local, root, scripts, gone_pid, f"a{r}_"))
            rounds["b"].append(await _primitives(client, root, scripts, gone_pid, f"b{r}_"))
    finally:
        await client.close()
    inproc, over = _merge(rounds["a"]), _merge(rounds["b"])
    overhead = {k: round(over[k]["p50_ms"] - inproc[k]["p50_ms"], 4) for k in inproc}
    return {"in_process": inproc, "socket": over, "overhead_p50_ms": overhead,
            "target_overhead_p50_ms": 0.3, "n": N}


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        root, scripts = tmp / "root", tmp / "scripts"
        root.mkdir()
        scripts.mkdir()
        (scripts / "true.sh").write_text("#!/bin/sh\nexit 0\n")
        os.chmod(scripts / "true.sh", 0o755)
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp / "executor.sock"))
        listener.listen(8)
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(listener.fileno()), str(root),
                                   str(tmp / "vault-b"), str(scripts)], pass_fds=(listener.fileno(),),
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline() == "ready\n"
            return asyncio.run(_bench(tmp, root, scripts, gone.pid))
        finally:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()
            listener.close()


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
