"""What an action may learn about the run it serves: the engine's `current_step()` and the detection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdd.engine.registry import StepInfo, current_step


def step() -> StepInfo | None:
    return current_step()


def dry_run() -> bool:
    info = current_step()
    return bool(info and info.dry_run)


def detection(context: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The detection behind this run: the engine's StepInfo first, else `context["detection"]`."""
    info = current_step()
    if info is not None and info.detection:
        return info.detection
    if context is not None:
        value = context.get("detection")
        if isinstance(value, Mapping):
            return value
    return {}


def ids() -> tuple[str | None, str | None, str | None]:
    """(run_id, step_id, idempotency_key) of the current step, or Nones outside the engine."""
    info = current_step()
    if info is None:
        return None, None, None
    return info.run_id, info.step_id, info.idempotency_key


def text(value: Any, limit: int = 512) -> str | None:
    if value is None:
        return None
    return str(value)[:limit]
