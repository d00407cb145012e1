"""Child process for test_durability: writes detections, runs and step intents as fast as it can and prints
one line per write *after* its commit resolved, until it is killed with SIGKILL."""

from __future__ import annotations

import asyncio
import sys

from sdd.store import Store


async def worker(store: Store, w: int, limit: int) -> None:
    out = sys.stdout
    for i in range(limit):
        name = f"w{w}-{i}"
        did = await store.add_detection({"type": "malware", "file_path": f"/tmp/{name}"}, spool_name=name)
        out.write(f"detection {name}\n")
        await store.create_run(f"run-{name}", "wf", did)
        await store.record_step_started(f"run-{name}", "script", action="run_script", idempotent=False)
        out.write(f"intent run-{name}\n")
        out.flush()


async def main(path: str) -> None:
    store = Store.open(path)
    print("ready", flush=True)
    await asyncio.gather(*(worker(store, w, 20000) for w in range(16)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
