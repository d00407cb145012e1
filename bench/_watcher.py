"""A full `subscribe` client as a process of its own (so its CPU is not the bench's GIL): reads every event.

`python -m bench._watcher SOCKET [EVENT...]` subscribes (all events unless some are named), prints
`subscribed` once the daemon has acknowledged, then reads until SIGTERM or 10 s without an event, and prints
one JSON object: events per kind, `lagged` misses, and `run.finished` arrival times ({run_id: time.time()}).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections import Counter

from sdd_client.client import Client


def main(socket_path: str, events: list[str]) -> int:
    counts: Counter[str] = Counter()
    finished: dict[str, float] = {}
    missed = 0
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    with Client(socket_path).subscribe(events=events or None, queue=10_000) as stream:
        print("subscribed", flush=True)
        stream.settimeout(0.2)
        idle_since = time.monotonic()
        while not stopping and time.monotonic() - idle_since < 10.0:
            try:
                event = next(stream)
            except TimeoutError:
                continue
            except StopIteration:
                break
            idle_since = time.monotonic()
            counts[event.name] += 1
            if event.name == "run.finished":
                finished[event.data["run_id"]] = time.time()
            elif event.name == "lagged":
                missed += int(event.data.get("missed", 0))
    print(json.dumps({"counts": dict(counts), "missed": missed, "finished": finished}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
