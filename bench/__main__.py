"""`make bench`: runs every benchmark module in bench/ and prints one JSON object.

Each module `bench/<area>.py` has `run() -> dict`; its figures land under the key `<area>`.
`python -m bench engine store` runs only the named areas.

`host` says, per area, how long it took and how much of the machine's CPU time the hypervisor gave to
others meanwhile (`steal_percent`, from /proc/stat): on a shared virtual machine that, not the code, is
often why two runs differ, so read an area's ratios with it.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path


def cpu_times() -> list[int]:
    """The machine's CPU time so far, in clock ticks, per kind (the `cpu` line of /proc/stat); [] if unknown."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return []
    return [int(x) for x in fields[1:9]] if fields[:1] == ["cpu"] else []


def steal_percent(before: list[int], after: list[int]) -> float | None:
    """Share of the CPU time between two `cpu_times()` that the hypervisor stole (the 8th kind)."""
    if len(before) < 8 or len(after) < 8:
        return None
    spent = [b - a for a, b in zip(before, after)]
    total = sum(spent)
    return round(100.0 * spent[7] / total, 1) if total > 0 else None


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    areas = argv or sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))
    out: dict[str, object] = {"machine": {"cpus": __import__("os").cpu_count(), "python": sys.version.split()[0]}}
    host: dict[str, dict[str, float | None]] = {}
    out["host"] = host
    for area in areas:
        start, ticks = time.perf_counter(), cpu_times()
        try:
            module = importlib.import_module(f"bench.{area}")
            out[area] = module.run()
        except Exception as exc:  # noqa: BLE001 -- one broken benchmark must not hide the others' figures
            out[area] = {"error": f"{type(exc).__name__}: {exc}"}
        seconds = time.perf_counter() - start
        host[area] = {"seconds": round(seconds, 1), "steal_percent": steal_percent(ticks, cpu_times())}
        print(f"bench: {area} took {seconds:.1f}s (steal {host[area]['steal_percent']}%)", file=sys.stderr)
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
