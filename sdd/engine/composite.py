"""Steps that contain or steer other steps: `condition`, `loop`, `parallel`, `branch`, `workflow`.

Each records its own StepStarted/StepFinished around its children; children get deterministic paths
(`par.child`, `loop[3].child`, `branch.child`, `sub.child`) so a resumed run finds their prior outcome.
A composite's `on_failure` decides what a failing child does to the rest of the run; composites are
not retried (their leaf steps are).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .attempt import describe
from .compilation import compiled
from .errors import ExpressionError
from .events import StepFinished, StepStarted
from .expressions import evaluate, evaluate_condition
from .flow import _Abort, _Halt
from .model import WorkflowStep
from .scope import Scope, StepsView
from .statuses import RunStatus, StepStatus

if TYPE_CHECKING:
    from .runner import Run

MAX_LOOP_ITEMS = 10_000
_EMPTY: Mapping[str, Any] = {}


async def run_composite(run: Run, step: WorkflowStep, path: str, parent: str | None, scope: Scope) -> None:
    started = time.time()
    try:
        c = compiled(step)
    except ExpressionError as exc:
        return await run.fail(step, path, parent, started, 0, str(exc), announce=True)
    kind = step.step_type
    if kind != "condition" and c.cond is not None:
        try:
            if not evaluate_condition(c.cond, scope.names):
                return await run.skip(step, path, parent, "condition is false")
        except ExpressionError as exc:
            return await run.fail(step, path, parent, started, 0, f"condition: {exc}", announce=True)
    if run.listeners:
        await run.emit(StepStarted(run.run_id, path, parent, kind, None, 1, True, "run", started, _EMPTY))
    try:
        if step.timeout is not None:
            try:
                async with asyncio.timeout(step.timeout) as cm:
                    result = await _dispatch(run, step, path, scope)
            except TimeoutError:
                if not cm.expired():
                    raise
                return await run.fail(step, path, parent, started, 1, f"timed out after {step.timeout:g}s")
        else:
            result = await _dispatch(run, step, path, scope)
    except _Abort as child:
        if child.status is not RunStatus.FAILED:
            raise  # interrupted/rolled back by resume: not this step's failure to handle
        return await run.fail(step, path, parent, started, 1, child.error, child_rollback=child.rollback)
    except _StepFailed as exc:
        return await run.fail(step, path, parent, started, 1, str(exc))
    except _Halt:
        _finish(run, step, path, StepStatus.COMPLETED, False, started)
        if run.listeners:
            await run.emit(StepFinished(run.run_id, path, StepStatus.COMPLETED, 1, started, time.time(), False,
                                        None, "run"))
        raise
    except asyncio.CancelledError:
        await run.cancelled(step, path, started, 1)
        raise
    finished = _finish(run, step, path, StepStatus.COMPLETED, result, started)
    if step.output:
        run.context[step.output] = result
    if run.listeners:
        await run.emit(StepFinished(run.run_id, path, StepStatus.COMPLETED, 1, started, finished, result, None,
                                    "run"))


class _StepFailed(Exception):
    """The composite step itself failed (bad items, unknown workflow, false condition with on_false: fail)."""


def _finish(run: Run, step: WorkflowStep, path: str, status: StepStatus, result: Any, started: float) -> float:
    finished = time.time()
    run.record(path, step, status, result, None, 1, started, finished)
    return finished


async def _dispatch(run: Run, step: WorkflowStep, path: str, scope: Scope) -> Any:
    kind = step.step_type
    if kind == "condition":
        return _condition(run, step, scope)
    if kind == "loop":
        return await _loop(run, step, path, scope)
    if kind == "parallel":
        return await _parallel(run, step, path, scope)
    if kind == "branch":
        return await _branch(run, step, path, scope)
    if kind == "workflow":
        if not step.workflow_id:
            raise _StepFailed("workflow step without workflow_id")
        return await _subworkflow(run, step, step.workflow_id, path, scope)
    raise _StepFailed(f"unknown step type {kind!r}")


def _condition(run: Run, step: WorkflowStep, scope: Scope) -> bool:
    c = compiled(step)
    if c.cond is None:
        raise _StepFailed("condition step without a condition")
    try:
        value = evaluate_condition(c.cond, scope.names)
    except ExpressionError as exc:
        raise _StepFailed(str(exc)) from None
    if not value:
        if step.on_false == "fail":
            raise _StepFailed(f"condition is false: {step.condition}")
        if step.on_false == "stop":
            raise _Halt()
    return value


def _child_scope(scope: Scope, prefix: str, context: dict[str, Any] | None = None, run: Run | None = None,
                 depth: int | None = None, workflow_id: str | None = None) -> Scope:
    names = scope.names
    if context is not None or run is not None:
        names = dict(names)
        if context is not None:
            names["context"] = context
        if run is not None:
            names["steps"] = StepsView(run, prefix)
    return Scope(names, context if context is not None else scope.context, prefix,
                 scope.depth if depth is None else depth, workflow_id or scope.workflow_id)


def _collect(run: Run, prefix: str, steps: list[WorkflowStep]) -> Any:
    results = {}
    for s in steps:
        sr = run.step_results.get(prefix + s.step_id)
        results[s.step_id] = None if sr is None else sr.result
    if len(steps) == 1:
        return results[steps[0].step_id]
    return results


async def _loop(run: Run, step: WorkflowStep, path: str, scope: Scope) -> list[Any]:
    c = compiled(step)
    try:
        if c.items is not None:
            items = evaluate(c.items, scope.names)
        elif c.items_value is not None and hasattr(c.items_value, "fn"):
            items = c.items_value.fn(scope.names)
        else:
            items = c.items_value
    except ExpressionError as exc:
        raise _StepFailed(f"items: {exc}") from None
    if isinstance(items, Mapping):
        items = [{"key": k, "value": v} for k, v in items.items()]
    if not isinstance(items, (list, tuple)):
        raise _StepFailed(f"items must give a list, not {type(items).__name__}")
    if len(items) > MAX_LOOP_ITEMS:
        raise _StepFailed(f"{len(items)} items is more than the limit of {MAX_LOOP_ITEMS}")

    async def one(index: int, item: Any) -> Any:
        prefix = f"{path}[{index}]."
        ctx = dict(scope.context)
        ctx[step.item_name] = item
        ctx["loop_index"] = index
        child = _child_scope(scope, prefix, context=ctx, run=run)
        await run.run_steps(step.steps, child, parent=path)
        return _collect(run, prefix, step.steps)

    if step.concurrency <= 1 or len(items) <= 1:
        return [await one(i, item) for i, item in enumerate(items)]
    sem = asyncio.Semaphore(step.concurrency)

    async def limited(index: int, item: Any) -> Any:
        async with sem:
            return await one(index, item)
    return await _gather_fail_fast([limited(i, item) for i, item in enumerate(items)], True)


async def _gather_fail_fast(coros: list[Any], fail_fast: bool) -> list[Any]:
    """Run concurrently; on the first failure cancel the rest (fail_fast) and re-raise that failure."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        if fail_fast:
            _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
            if failed:
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                raise failed[0].exception()  # type: ignore[misc]
        else:
            await asyncio.wait(tasks)
            failed = [t for t in tasks if not t.cancelled() and t.exception() is not None]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
        return [t.result() for t in tasks]
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _parallel(run: Run, step: WorkflowStep, path: str, scope: Scope) -> dict[str, Any]:
    prefix = path + "."
    child = _child_scope(scope, prefix, run=run)
    await _gather_fail_fast([run.run_steps([s], child, parent=path) for s in step.steps], step.fail_fast)
    return {s.step_id: _collect(run, prefix, [s]) for s in step.steps}


async def _branch(run: Run, step: WorkflowStep, path: str, scope: Scope) -> dict[str, Any]:
    c = compiled(step)
    for index, (cond, case) in enumerate(c.cases):
        if cond is not None:
            try:
                taken = evaluate_condition(cond, scope.names)
            except ExpressionError as exc:
                raise _StepFailed(f"branch {index}: {exc}") from None
            if not taken:
                continue
        label: Any = index if cond is not None else "else"
        if case.workflow is not None:
            result = await _subworkflow(run, step, case.workflow, path, scope)
        else:
            prefix = path + "."
            await run.run_steps(case.steps, _child_scope(scope, prefix, run=run), parent=path)
            result = _collect(run, prefix, case.steps) if case.steps else None
        return {"taken": label, "result": result}
    return {"taken": None, "result": None}


async def _subworkflow(run: Run, step: WorkflowStep, workflow_id: str, path: str, scope: Scope) -> Any:
    sub = run.engine.workflows.get(workflow_id)
    if sub is None:
        raise _StepFailed(f"unknown workflow {workflow_id!r}")
    depth = scope.depth + 1
    if depth > run.engine.max_depth:
        raise _StepFailed(f"sub-workflow depth limit ({run.engine.max_depth}) reached at {workflow_id!r}")
    ctx = scope.context
    for key, value in sub.context.items():
        ctx.setdefault(key, value)
    c = compiled(step)
    if step.step_type == "workflow" and step.params:
        try:
            ctx.update(step.params if c.params is None else c.params.fn(scope.names))
        except ExpressionError as exc:
            raise _StepFailed(f"params: {exc}") from None
    prefix = path + "."
    child = _child_scope(scope, prefix, run=run, depth=depth, workflow_id=workflow_id)
    await run.run_steps(sub.steps, child, parent=path)
    return {s.step_id: (run.step_results[prefix + s.step_id].result
                        if prefix + s.step_id in run.step_results else None) for s in sub.steps}


__all__ = ["describe", "run_composite"]
