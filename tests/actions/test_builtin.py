"""The action table: names, flags and layering as docs/internals.md states them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sdd.actions import ActionServices, builtin_actions, guards_status
from sdd.config import ActionsConfig

EXPECTED = {  # name: (idempotent, destructive)
    "quarantine_file": (True, True), "restore_file": (True, False), "delete_file": (True, True),
    "kill_process": (True, True), "send_notification": (True, False), "update_definitions": (True, False),
    "run_scan": (True, False), "generate_report": (True, False), "call_webhook": (False, False),
    "run_script": (False, False), "add_exclusion": (True, False), "remove_exclusion": (True, False),
    "log_false_positive": (True, False), "restore_detection": (True, False),
}


def test_every_builtin_has_its_documented_flags(tmp_path: Path) -> None:
    specs = builtin_actions(ActionServices(ActionsConfig(), tmp_path))
    assert {s.name: (s.idempotent, s.destructive) for s in specs} == EXPECTED
    assert all(s.description for s in specs)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "actions.md").read_text()
    assert all(f"## {name}" in docs or f"`{name}`" in docs for name in EXPECTED)


def test_guards_status_lists_the_configured_limits(tmp_path: Path) -> None:
    services = ActionServices(ActionsConfig(), tmp_path)
    status = guards_status(services)
    assert services.guards_status() == status
    assert set(status["rate_limits"]) == {"kill_process", "quarantine_file", "delete_file"}
    assert status["breakers"] == {}


def test_actions_never_import_the_daemon_api_bus_or_store() -> None:
    code = ("import sys, sdd.actions; bad = [m for m in ('sdd.daemon', 'sdd.api', 'sdd.bus', 'sdd.store', "
            "'sdd.hub') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
