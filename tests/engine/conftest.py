"""Fixtures for engine tests: an engine with recording test actions (no dependency on sdd.actions)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sdd.engine import ActionError, Workflow, WorkflowEngine, current_step


class Recorder:
    """Records every handler call as (action, params, step path, attempt)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str | None, int | None]] = []
        self.events: list[Any] = []
        self.failures: dict[str, int] = {}   # action -> how many more times it fails
        self.gates: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def paths(self, action: str | None = None) -> list[str | None]:
        return [c[2] for c in self.calls if action is None or c[0] == action]

    def event_names(self, phase: str | None = None) -> list[str]:
        out = []
        for e in self.events:
            if phase is not None and getattr(e, "phase", None) != phase:
                continue
            out.append(f"{type(e).__name__}:{getattr(e, 'step_id', '')}")
        return out


def make_engine(rec: Recorder, **kwargs: Any) -> WorkflowEngine:
    engine = WorkflowEngine(listeners=[rec.events.append], **kwargs)

    def recording(name: str, result: Any = None):
        async def handler(*, context: dict[str, Any], **params: Any) -> Any:
            info = current_step()
            rec.calls.append((name, params, info.step_id if info else None, info.attempt if info else None))
            if name in rec.started:
                rec.started[name].set()
            if name in rec.gates:
                await rec.gates[name].wait()
            left = rec.failures.get(name, 0)
            if left:
                rec.failures[name] = left - 1
                raise ActionError(f"{name} failed on purpose")
            return {"action": name, **params} if result is None else result
        return handler

    for name in ("act", "other", "undo", "send_notification", "run_script", "call_webhook", "slow"):
        engine.register_action(name, recording(name), idempotent=name != "run_script")

    async def boom(*, context: dict[str, Any], **params: Any) -> Any:
        rec.calls.append(("boom", params, None, None))
        raise ActionError("boom")
    engine.register_action("boom", boom)

    async def set_ctx(*, context: dict[str, Any], key: str, value: Any) -> Any:
        rec.calls.append(("set_ctx", {"key": key, "value": value}, None, None))
        context[key] = value
        return value
    engine.register_action("set_ctx", set_ctx, idempotent=True)
    return engine


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def engine(rec: Recorder) -> WorkflowEngine:
    return make_engine(rec)


def wf(steps: list[dict[str, Any]], **extra: Any) -> Workflow:
    return Workflow.from_dict({"workflow_id": extra.pop("workflow_id", "test"), "steps": steps, **extra})
