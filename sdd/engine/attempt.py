"""One attempt at a step's handler: the call bounded by a timeout, the words its failure is recorded in,
and the delay before the next attempt (retry_delay x backoff^n, capped, with jitter).

Pure helpers of `Run.attempts` and rollback; whether to retry at all is the run's decision.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any

from .errors import ActionError, EngineError, StepTimeout
from .model import WorkflowStep


async def call_with_timeout(handler: Any, params: Mapping[str, Any], context: dict[str, Any],
                            timeout: float) -> Any:
    try:
        async with asyncio.timeout(timeout) as cm:
            result = handler(**params, context=context)
            if result is not None and hasattr(result, "__await__"):
                result = await result
            return result
    except TimeoutError:
        if cm.expired():
            raise StepTimeout(f"timed out after {timeout:g}s") from None
        raise


def describe(exc: BaseException) -> str:
    if isinstance(exc, EngineError):
        text = str(exc)
        if isinstance(exc, ActionError) and not isinstance(exc, StepTimeout) and type(exc) is not ActionError:
            return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        return text or type(exc).__name__
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def retry_delay(step: WorkflowStep, attempt: int) -> float:
    """Delay before attempt `attempt + 1`: retry_delay x backoff^(attempt-1), capped, +/- jitter."""
    delay = step.retry_delay * (step.backoff ** (attempt - 1)) if step.retry_delay > 0 else 0.0
    delay = min(delay, step.max_delay)
    if delay > 0 and step.jitter > 0:
        delay *= 1.0 + random.uniform(-step.jitter, step.jitter)
    return max(delay, 0.0)


__all__ = ["call_with_timeout", "describe", "retry_delay"]
