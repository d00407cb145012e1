"""Steps that contain or steer other steps: `condition`, `loop`, `parallel`, `branch`, `workflow`.

Each records its own StepStarted/StepFinished around its children; children get deterministic paths
(`par.child`, `loop[3].child`, `branch.child`, `sub.child`) so a resumed run finds their prior outcome.
A composite's `on_failure` decides what a failing child does to the rest of the run; composites are
not retried (their leaf steps are). What each step means (items, the case taken, the sub-workflow) is
decided in `semantics.py`, the same rules the plan uses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from .errors import ExpressionError
from .events import StepFinished, StepStarted
from .expressions import evaluate_condition
from .flow import StepProblem, _Abort, _Halt
from .journal import EMPTY, RunState
from .scope import Scope
from .semantics import choose_case, condition_holds, enter_subworkflow, item_context, item_path, loop_items
from .semantics import subworkflow as find_subworkflow
from .specs.compilation import compiled
from .specs.model import WorkflowStep
from .specs.vocabulary import OnFalse, StepType
from .statuses import Phase, RunStatus, StepStatus


async def run_composite(run: RunState, step: WorkflowStep, path: str, parent: str | None, scope: Scope) -> None:
    started = time.time()
    try:
        c = compiled(step)
    except ExpressionError as exc:
        return await run.fail(step, path, parent, started, 0, str(exc), announce=True)
    kind = step.step_type
    if kind != StepType.CONDITION:
        try:
            if not condition_holds(c.cond, scope.names):
                return await run.skip(step, path, parent, "condition is false")
        except ExpressionError as exc:
            return await run.fail(step, path, parent, started, 0, f"condition: {exc}", announce=True)
    if run.listeners:
        await run.emit(StepStarted(run.run_id, path, parent, kind, None, 1, True, Phase.RUN, started, EMPTY,
                                   run.labels))
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
    except StepProblem as exc:
        return await run.fail(step, path, parent, started, 1, str(exc))
    except _Halt:
        finished = _finish(run, step, path, False, started)
        if run.listeners:
            await run.emit(StepFinished(run.run_id, path, StepStatus.COMPLETED, 1, started, finished, False,
                                        None, Phase.RUN, run.labels))
        raise
    except asyncio.CancelledError:
        await run.cancelled(step, path, started, 1)
        raise
    finished = _finish(run, step, path, result, started)
    if step.output:
        run.context[step.output] = result
    if run.listeners:
        await run.emit(StepFinished(run.run_id, path, StepStatus.COMPLETED, 1, started, finished, result, None,
                                    Phase.RUN, run.labels))


def _finish(run: RunState, step: WorkflowStep, path: str, result: Any, started: float) -> float:
    finished = time.time()
    run.record(path, step, StepStatus.COMPLETED, result, None, 1, started, finished)
    return finished


async def _dispatch(run: RunState, step: WorkflowStep, path: str, scope: Scope) -> Any:
    kind = step.step_type
    if kind == StepType.CONDITION:
        return _condition(step, scope)
    if kind == StepType.LOOP:
        return await _loop(run, step, path, scope)
    if kind == StepType.PARALLEL:
        return await _parallel(run, step, path, scope)
    if kind == StepType.BRANCH:
        return await _branch(run, step, path, scope)
    if kind == StepType.WORKFLOW:
        return await _subworkflow(run, step, step.workflow_id, path, scope)
    raise StepProblem(f"unknown step type {kind!r}")


def _condition(step: WorkflowStep, scope: Scope) -> bool:
    c = compiled(step)
    if c.cond is None:
        raise StepProblem("condition step without a condition")
    try:
        value = evaluate_condition(c.cond, scope.names)
    except ExpressionError as exc:
        raise StepProblem(str(exc)) from None
    if not value:
        if step.on_false == OnFalse.FAIL:
            raise StepProblem(f"condition is false: {step.condition}")
        if step.on_false == OnFalse.STOP:
            raise _Halt()
    return value


def _collect(run: RunState, prefix: str, steps: list[WorkflowStep]) -> Any:
    """The results of `steps` under `prefix`: the one result of a single step, else a dict by step_id."""
    results = {}
    for s in steps:
        sr = run.step_results.get(prefix + s.step_id)
        results[s.step_id] = None if sr is None else sr.result
    if len(steps) == 1:
        return results[steps[0].step_id]
    return results


async def _loop(run: RunState, step: WorkflowStep, path: str, scope: Scope) -> list[Any]:
    try:
        items = loop_items(compiled(step), scope.names)
    except ExpressionError as exc:
        raise StepProblem(f"items: {exc}") from None

    async def one(index: int, item: Any) -> Any:
        prefix = item_path(path, index)
        child = scope.child(prefix, run.step_results, run.local_ids,
                            context=item_context(scope.context, step, index, item))
        await run.run_steps(step.steps, child, parent=path)
        return _collect(run, prefix, step.steps)

    if step.concurrency <= 1 or len(items) <= 1:
        return [await one(i, item) for i, item in enumerate(items)]
    sem = asyncio.Semaphore(step.concurrency)

    async def limited(index: int, item: Any) -> Any:
        async with sem:
            return await one(index, item)
    return await _gather_fail_fast([limited(i, item) for i, item in enumerate(items)], True)


async def _gather_fail_fast(coros: list[Coroutine[Any, Any, Any]], fail_fast: bool) -> list[Any]:
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


async def _parallel(run: RunState, step: WorkflowStep, path: str, scope: Scope) -> dict[str, Any]:
    prefix = path + "."
    child = scope.child(prefix, run.step_results, run.local_ids)
    await _gather_fail_fast([run.run_steps([s], child, parent=path) for s in step.steps], step.fail_fast)
    return {s.step_id: _collect(run, prefix, [s]) for s in step.steps}


async def _branch(run: RunState, step: WorkflowStep, path: str, scope: Scope) -> dict[str, Any]:
    try:
        chosen = choose_case(compiled(step), scope.names)
    except ExpressionError as exc:
        raise StepProblem(str(exc)) from None
    if chosen is None:
        return {"taken": None, "result": None}
    label, case = chosen
    if case.workflow is not None:
        result = await _subworkflow(run, step, case.workflow, path, scope)
    else:
        prefix = path + "."
        await run.run_steps(case.steps, scope.child(prefix, run.step_results, run.local_ids), parent=path)
        result = _collect(run, prefix, case.steps) if case.steps else None
    return {"taken": label, "result": result}


async def _subworkflow(run: RunState, step: WorkflowStep, workflow_id: str | None, path: str,
                       scope: Scope) -> Any:
    depth = scope.depth + 1
    sub = find_subworkflow(run.env.find_workflow, workflow_id, depth, run.env.max_depth)
    try:
        enter_subworkflow(scope.context, sub, step, compiled(step), scope.names)
    except ExpressionError as exc:
        raise StepProblem(f"params: {exc}") from None
    prefix = path + "."
    child = scope.child(prefix, run.step_results, run.local_ids, depth=depth, workflow_id=sub.workflow_id)
    await run.run_steps(sub.steps, child, parent=path)
    return {s.step_id: (run.step_results[prefix + s.step_id].result
                        if prefix + s.step_id in run.step_results else None) for s in sub.steps}


__all__ = ["run_composite"]
