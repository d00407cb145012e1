"""The cost of the privilege boundary: each executor primitive called in-process (user mode) and over the
executor's Unix socket to a server in another process (system mode), same requests, same checks.

`overhead_p50_ms` = socket p50 - in-process p50 per primitive (issue 12's target: <= 0.3 ms), and
`overhead_paired_median_ms` the median of (socket - in-process) over calls made back to back. The
primitives are kept cheap so that the crossing is what is measured: a lookup, a delete of an absent file,
a quarantine + restore of a 4 KiB file (vaults on tmpfs when /dev/shm is writable: fsync's noise is the
disk's, not the boundary's), a kill of a process that is already gone, a trivial script.
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

N = 300
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


def _figures(times: list[float]) -> dict[str, float]:
    return {"p50_ms": _p(times, 0.5), "p99_ms": _p(times, 0.99), "mean_ms": round(statistics.fmean(times) * 1000, 4)}


async def _timed(aw: Any) -> float:
    t = time.perf_counter()
    await aw
    return time.perf_counter() - t


async def _expect_error(aw: Any) -> None:
    with contextlib.suppress(PrimitiveError):  # the not-found answer is what is timed
        await aw


def _cases(root: Path, scripts: Path, gone_pid: int) -> dict[str, tuple[int, Callable[[Any, str, int], Any]]]:
    """name -> (calls, call(executor, side, i)): the same request shapes for both sides."""
    async def quarantine_restore(executor: Any, side: str, i: int) -> None:
        path = root / f"{side}{i}.exe"
        path.write_bytes(os.urandom(4096))
        done = await executor.call(Quarantine(str(path)))
        await executor.call(Restore(done.value["meta"]["quarantine_id"]))
    return {
        "lookup_missing": (N, lambda ex, side, i: _expect_error(ex.call(Lookup(path=f"{root}/none{side}{i}")))),
        "delete_absent": (N, lambda ex, side, i: ex.call(Delete(f"{root}/absent{side}{i}"))),
        "quarantine_restore_4k": (N, quarantine_restore),
        "kill_gone": (N, lambda ex, side, i: ex.call(Kill(pid=gone_pid, trust=True, start_time=0.0))),
        "run_script_true": (N // 2, lambda ex, side, i: ex.call(RunScript(str(scripts / "true.sh")))),
    }


async def _bench(tmp: Path, root: Path, scripts: Path, gone_pid: int) -> dict[str, Any]:
    # Each side its own vault (on tmpfs when there is one, so fsync's noise is not what is measured), both
    # growing alike. Each call of a primitive is made on both sides back to back, the side going first
    # alternating, so a noisy moment hits both alike; the figures are medians over all calls.
    policy = Policy.build([root], tmp / "vault-a", scripts_dir=scripts, user_mode=True)
    client = SocketExecutor(str(tmp / "executor.sock"))
    sides: dict[str, Any] = {"in_process": InProcessExecutor(policy), "socket": client}
    out: dict[str, dict[str, Any]] = {"in_process": {}, "socket": {}, "overhead_p50_ms": {},
                                      "overhead_paired_median_ms": {}}
    try:
        for name, (n, call) in _cases(root, scripts, gone_pid).items():
            for side, ex in sides.items():
                await call(ex, side, -1)  # warm up: the first call of a kind pays for imports and caches
            times: dict[str, list[float]] = {"in_process": [], "socket": []}
            for i in range(n):
                order = list(sides) if i % 2 else list(sides)[::-1]
                for side in order:
                    times[side].append(await _timed(call(sides[side], side, i)))
            for side in sides:
                out[side][name] = _figures(times[side])
            out["overhead_p50_ms"][name] = round(out["socket"][name]["p50_ms"] - out["in_process"][name]["p50_ms"], 4)
            out["overhead_paired_median_ms"][name] = round(statistics.median(
                b - a for a, b in zip(times["in_process"], times["socket"], strict=True)) * 1000, 4)
    finally:
        await client.close()
    return {**out, "target_overhead_p50_ms": 0.3, "n": N, "tmpfs": str(tmp).startswith("/dev/shm")}


def run() -> dict[str, Any]:
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=shm) as name:
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
