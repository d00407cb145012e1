"""`WorkflowEngine`: the public face of the engine — action registry, listeners, the set of workflows used
for sub-workflows (and the template directories they are also found in), planning, and starting/cancelling
runs (`RunHandle`). The walk itself is in `runner.py`, the plan (and dry run) in `plan.py`."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .env import RunEnv
from .errors import EngineError, NotFound, WorkflowValidationError
from .events import NO_LABELS, Listener
from .plan import plan
from .registry import ActionRegistry, ActionSpec, Handler, discover_entry_points
from .results import PriorStep, WorkflowResult
from .runner import Run
from .specs.loader import load_workflow
from .specs.model import Workflow
from .specs.params import ParamSpec, param_specs
from .statuses import RunStatus


class _RandomPool:
    """`os.urandom` bought 4 KiB at a time: one getrandom(2) per ~400 run ids instead of one each (a syscall
    that drops the GIL on the event loop's thread, which in a burst must then wait to get it back). A forked
    child starts with an empty pool, so parent and child never hand out the same bytes."""

    def __init__(self, size: int = 4096):
        self._size = size
        self._buf = b""
        self._pos = 0
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._buf, self._pos, self._lock = b"", 0, threading.Lock()

    def take(self, n: int) -> bytes:
        with self._lock:
            pos = self._pos
            if pos + n > len(self._buf):
                self._buf, pos = os.urandom(self._size), 0
            self._pos = pos + n
            return self._buf[pos:pos + n]


_RANDOM = _RandomPool()


def new_run_id() -> str:
    """32 lowercase hex digits, time-ordered like a UUIDv7: 48 bits of Unix milliseconds, then 80 random bits.
    Ids of runs started close together sort together, so the history's B-trees (runs, steps) grow at their
    right edge instead of at random pages: a burst's transactions dirty a few pages, not one per run. 80
    random bits keep ids unguessable and collisions out of reach (2**40 runs in one millisecond)."""
    return f"{time.time_ns() // 1_000_000 & 0xFFFFFFFFFFFF:012x}{_RANDOM.take(10).hex()}"


class RunHandle:
    """A started run: `await handle.wait()` for its `WorkflowResult`, `handle.cancel()` to stop it."""

    __slots__ = ("_run", "run_id", "task")

    def __init__(self, run_id: str, task: asyncio.Task[WorkflowResult], run: Run):
        self.run_id = run_id
        self.task = task
        self._run = run

    @property
    def workflow(self) -> Workflow:
        return self._run.workflow

    @property
    def status(self) -> RunStatus:
        return self._run.status

    @property
    def labels(self) -> Mapping[str, str]:
        """What `engine.start(labels=...)` attached to the run (read-only)."""
        return self._run.labels

    def done(self) -> bool:
        return self.task.done()

    async def wait(self) -> WorkflowResult:
        """The run's result; cancelling the waiter does not cancel the run."""
        return await asyncio.shield(self.task)

    def cancel(self, interrupt: bool = False) -> bool:
        """Stop the run. It then rolls back if the workflow says `rollback_on_failure` and ends `cancelled`;
        with `interrupt=True` it ends `interrupted` at once, without rollback (shutdown after the grace
        period). False when the run had already finished."""
        run = self._run
        if self.task.done() or run.finishing:
            return False
        if interrupt:
            run.interrupt = True
        if run.cancel_requested and not interrupt:
            return True
        run.cancel_requested = True
        if run.started:
            self.task.cancel()
        # Not started yet: main() sees cancel_requested first thing and ends the run cancelled.
        return True

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r}, {self.status.value})"


def _frozen_labels(labels: Mapping[str, str] | None) -> Mapping[str, str]:
    if not labels:
        return NO_LABELS
    if not isinstance(labels, Mapping):
        raise EngineError(f"labels must be a mapping of strings, not {type(labels).__name__}")
    bad = [k for k, v in labels.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise EngineError(f"labels must map strings to strings; not so for {', '.join(map(repr, bad[:5]))}")
    return MappingProxyType(dict(labels))


def default_template_dirs() -> list[Path]:
    env = os.environ.get("SDD_TEMPLATES")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [Path(__file__).resolve().parents[2] / "templates"]


class WorkflowEngine:
    """Runs workflows. No global state: actions, listeners and known workflows belong to the instance."""

    def __init__(self, actions: Iterable[ActionSpec] = (), listeners: Iterable[Listener] = (),
                 workflows: Mapping[str, Workflow] | None = None, max_depth: int = 8,
                 template_dirs: Iterable[str | Path] | None = None):
        self.registry = ActionRegistry(actions)
        self._listeners: tuple[Listener, ...] = tuple(listeners)
        self.workflows: Mapping[str, Workflow] = dict(workflows or {})
        self.max_depth = max_depth
        self.template_dirs = [Path(p) for p in template_dirs] if template_dirs is not None else None
        self.active_runs: dict[str, RunHandle] = {}
        self.discovery_errors: list[str] = []
        self._from_templates: dict[str, Workflow] = {}
        self._env: RunEnv | None = None

    # -- actions
    def register_action(self, name: str, handler: Handler, *, idempotent: bool = False,
                        destructive: bool = False, description: str = "",
                        params: Mapping[str, ParamSpec | Mapping[str, Any]] | None = None) -> ActionSpec:
        spec = ActionSpec(name, handler, idempotent=idempotent, destructive=destructive,
                          description=description, params=param_specs(params))
        self.registry.register(spec)
        return spec

    def register(self, spec: ActionSpec) -> None:
        self.registry.register(spec)

    def discover_actions(self) -> list[ActionSpec]:
        """Register every action of the entry-point group `sdd.actions`; broken plugins are listed in
        `discovery_errors` and skipped."""
        specs, errors = discover_entry_points()
        for spec in specs:
            self.registry.register(spec)
        self.discovery_errors.extend(errors)
        return specs

    @property
    def actions(self) -> frozenset[str]:
        return self.registry.names()

    # -- listeners and workflows
    @property
    def listeners(self) -> tuple[Listener, ...]:
        return self._listeners

    def add_listener(self, listener: Listener) -> None:
        self._listeners = self._listeners + (listener,)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners = tuple(x for x in self._listeners if x is not listener)

    def set_workflows(self, workflows: Mapping[str, Workflow]) -> None:
        """Swap the set used to resolve sub-workflows (on reload); running runs keep what they resolved."""
        self.workflows = dict(workflows)

    def find_workflow(self, workflow_id: str) -> Workflow | None:
        """The workflow a sub-workflow step or a branch arm names: from `workflows=` (or `set_workflows`),
        else `workflow_id.yaml` from the template dirs (loaded once); None when neither has it."""
        wf = self.workflows.get(workflow_id)
        if wf is None:
            wf = self._from_templates.get(workflow_id)
        if wf is None:
            try:
                wf = self.load_template(workflow_id)
            except (NotFound, WorkflowValidationError):
                return None
            self._from_templates[workflow_id] = wf
        return wf

    def load_template(self, name: str) -> Workflow:
        """`NAME.yaml` (or `.yml`) from the template dirs, validated."""
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise NotFound(f"invalid template name {name!r}")
        dirs = self.template_dirs if self.template_dirs is not None else default_template_dirs()
        for d in dirs:
            for ext in (".yaml", ".yml"):
                path = Path(d) / f"{name}{ext}"
                if path.is_file():
                    return load_workflow(path)
        raise NotFound(f"no template {name!r} in {', '.join(str(d) for d in dirs)}")

    # -- running
    def env(self) -> RunEnv:
        """What a run gets of this engine: actions, listeners (as they are now), sub-workflow lookup."""
        env = self._env
        if env is None or env.listeners is not self._listeners or env.max_depth != self.max_depth:
            env = self._env = RunEnv(self.registry, self._listeners, self.find_workflow, self.max_depth)
        return env

    def start(self, workflow: Workflow, context: Mapping[str, Any] | None = None, *,
              detection: Mapping[str, Any] | None = None, run_id: str | None = None, dry_run: bool = False,
              prior: Mapping[str, PriorStep] | None = None, labels: Mapping[str, str] | None = None
              ) -> RunHandle:
        """Start a run on the running loop and return at once.

        `labels` (strings to strings: the caller's ids for the run, its trigger, ...) travel with the run,
        read-only, in every event, in `current_step().labels`, in `handle.labels` and in the result.
        `dry_run=True` runs nothing: the run reports the plan (see `plan()`) as its steps and completes."""
        if not isinstance(workflow, Workflow):
            raise EngineError(f"expected a Workflow, got {type(workflow).__name__}")
        ctx = dict(workflow.context)
        if context:
            ctx.update(context)
        rid = run_id or new_run_id()
        if rid in self.active_runs:
            raise EngineError(f"run {rid!r} is already running")
        run = Run(self.env(), workflow, ctx, detection, rid, dry_run, prior,
                  NO_LABELS if labels is None else _frozen_labels(labels))
        task = asyncio.get_running_loop().create_task(run.main(), name=rid)
        handle = RunHandle(rid, task, run)
        self.active_runs[rid] = handle
        # Done (finished, failed inside the engine, or cancelled before it began): no longer active. The
        # callback is called with the task, which becomes pop's unused default: no Python frame per run.
        task.add_done_callback(functools.partial(self.active_runs.pop, rid))
        return handle

    async def execute_workflow(self, workflow: Workflow, context: Mapping[str, Any] | None = None, *,
                               detection: Mapping[str, Any] | None = None, run_id: str | None = None,
                               dry_run: bool = False, prior: Mapping[str, PriorStep] | None = None,
                               labels: Mapping[str, str] | None = None) -> WorkflowResult:
        """start() + wait(); cancelling the caller cancels the run."""
        handle = self.start(workflow, context, detection=detection, run_id=run_id, dry_run=dry_run,
                            prior=prior, labels=labels)
        try:
            return await asyncio.shield(handle.task)
        except asyncio.CancelledError:
            handle.cancel()
            raise

    execute = execute_workflow

    def plan(self, workflow: Workflow, context: Mapping[str, Any] | None = None,
             detection: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """What each step would do for this context and detection, running nothing and recording nothing:
        one entry per step reached (`step_id` path, `parent_id`, `step_type`, `action`, `would_run`: True,
        False or None for undecided, `reason`, rendered `params`, `irreversible`, `idempotent`). A dry run
        (`start(..., dry_run=True)`) reports exactly this plan."""
        return plan(self.env(), workflow, context, detection)
