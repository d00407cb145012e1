"""The table of built-in actions: name, handler, idempotent/destructive flags (docs/internals.md lists
them; docs/actions.md documents each), with each one's parameters from `declarations.py`.
`builtin_actions(services)` binds every handler to one `ActionServices` and returns the `ActionSpec`s the
engine registers."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from sdd.engine import ActionSpec
from sdd.engine.specs.params import param_specs
from sdd.executor import PrimitiveError

from .declarations import DECLARATIONS
from .exclusions import add_exclusion, log_false_positive, remove_exclusion
from .executing import engine_error
from .files import delete_file, quarantine_file, restore_file
from .notify import send_notification
from .process import kill_process
from .report import generate_report
from .scanner import run_scan, update_definitions
from .script import run_script
from .services import ActionServices
from .undo import restore_detection
from .webhook import call_webhook

Impl = Callable[..., Awaitable[Any]]

# name, implementation, idempotent, destructive, description
BUILTINS: tuple[tuple[str, Impl, bool, bool, str], ...] = (
    ("quarantine_file", quarantine_file, True, True, "Move a file into the quarantine vault (neutralised)"),
    ("restore_file", restore_file, True, False, "Restore a quarantined file, never overwriting"),
    ("restore_detection", restore_detection, True, False, "Undo what one detection's runs quarantined"),
    ("delete_file", delete_file, True, True, "Delete a file (irreversible)"),
    ("kill_process", kill_process, True, True, "Terminate a process (pid + start time), optionally its tree"),
    ("send_notification", send_notification, True, False, "Desktop, email, syslog or log notification"),
    ("update_definitions", update_definitions, True, False, "Run the configured signature updater"),
    ("run_scan", run_scan, True, False, "Scan a tree with ClamAV or YARA rules; findings name files exactly"),
    ("generate_report", generate_report, True, False, "Write a JSON + HTML incident report of the run"),
    ("call_webhook", call_webhook, False, False, "Signed JSON request to an http(s) URL"),
    ("run_script", run_script, False, False, "Run an executable from scripts_dir"),
    ("add_exclusion", add_exclusion, True, False, "Exclude a SHA-256 or path from triggering workflows"),
    ("remove_exclusion", remove_exclusion, True, False, "Remove an exclusion"),
    ("log_false_positive", log_false_positive, True, False, "Record a false positive for analysis"),
)


def _bind(impl: Impl, services: ActionServices) -> Impl:
    @functools.wraps(impl)
    async def handler(*, context: dict[str, Any] | None = None, **params: Any) -> Any:
        try:
            return await impl(services, context=context, **params)
        except PrimitiveError as exc:  # from a path helper a handler used directly (scan's walk)
            raise engine_error(exc) from exc
    return handler


def builtin_actions(services: ActionServices) -> list[ActionSpec]:
    """Every built-in action bound to `services`, ready for `WorkflowEngine(actions=...)`."""
    return [ActionSpec(name=name, handler=_bind(impl, services), idempotent=idem, destructive=destr,
                       description=desc, params=param_specs(DECLARATIONS[name]))
            for name, impl, idem, destr, desc in BUILTINS]
