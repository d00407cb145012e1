"""`make bench`: runs every benchmark module in bench/ and prints one JSON object.

Each module `bench/<area>.py` has `run() -> dict`; its figures land under the key `<area>`.
`python -m bench engine store` runs only the named areas.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    areas = argv or sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))
    out: dict[str, object] = {"machine": {"cpus": __import__("os").cpu_count(), "python": sys.version.split()[0]}}
    for area in areas:
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{area}")
            out[area] = module.run()
        except Exception as exc:  # noqa: BLE001 -- one broken benchmark must not hide the others' figures
            out[area] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"bench: {area} took {time.perf_counter() - start:.1f}s", file=sys.stderr)
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
