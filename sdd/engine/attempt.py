"""One call of an action's handler — the only place the engine invokes one, for running a step and for
rolling it back: the step's identity set for `current_step()`, the call bounded by a timeout. Beside it, the
words a failure is recorded in and the delay before the next attempt (retry_delay x backoff^n, capped,
with jitter). Whether to retry at all is the run's decision.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Mapping
from typing import Any

from .errors import ActionError, EngineError, StepTimeout
from .registry import Handler, _current_step
from .specs.model import WorkflowStep


async def invoke(handler: Handler, params: Mapping[str, Any], context: dict[str, Any], timeout: float | None,
                 step_info: tuple[Any, ...]) -> Any:
    """`handler(**params, context=context)` (awaited when it returns an awaitable), with `step_info` (the
    fields of a StepInfo) visible to it through `current_step()`. Past `timeout` seconds the handler is
    cancelled and StepTimeout raised; a TimeoutError the handler raises itself stays its own failure."""
    token = _current_step.set(step_info)
    try:
        result = handler(**params, context=context)
        if result is not None and hasattr(result, "__await__"):
            result = await (result if timeout is None else _within(result, timeout))
        return result
    finally:
        _current_step.reset(token)


async def _within(awaitable: Awaitable[Any], timeout: float) -> Any:
    try:
        async with asyncio.timeout(timeout) as limit:
            return await awaitable
    except TimeoutError:
        if limit.expired():
            raise StepTimeout(f"timed out after {timeout:g}s") from None
        raise


def describe(exc: BaseException) -> str:
    """The words a handler's failure is recorded in: the message, with the exception's class when the class
    says something the message may not (anything but ActionError itself and a timeout)."""
    text = str(exc)
    if isinstance(exc, EngineError) and (type(exc) is ActionError or isinstance(exc, StepTimeout)
                                         or not isinstance(exc, ActionError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def retry_delay(step: WorkflowStep, attempt: int) -> float:
    """Delay before attempt `attempt + 1`: retry_delay x backoff^(attempt-1), capped, +/- jitter."""
    delay = step.retry_delay * (step.backoff ** (attempt - 1)) if step.retry_delay > 0 else 0.0
    delay = min(delay, step.max_delay)
    if delay > 0 and step.jitter > 0:
        delay *= 1.0 + random.uniform(-step.jitter, step.jitter)
    return max(delay, 0.0)


__all__ = ["describe", "invoke", "retry_delay"]
