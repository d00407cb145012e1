"""The root side is small and stands alone: it imports nothing of the engine, API, D-Bus, store or actions."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("sdd.engine", "sdd.api", "sdd.bus", "sdd.store", "sdd.actions", "sdd.daemon", "sdd.dispatch",
             "sdd.hub", "yaml", "dbus_next")


def test_the_executor_imports_nothing_from_the_engine_api_bus_or_store() -> None:
    code = ("import sys, sdd.executor, sdd.executor.service, sdd.executor.spawn, sdd.config; "
            f"bad = [m for m in sys.modules if m.startswith({FORBIDDEN!r})]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
