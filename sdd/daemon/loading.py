"""Loading the daemon's actions (built-in + entry-point plugins) and workflows from its config: shared by
the daemon (start-up, reload) and `sdd check-config`. Neither function raises on bad input: every problem is
returned, named, for the caller to log or print. Once loaded, `freeze_long_lived()` takes it all out of the
garbage collector's way."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable, Mapping
from typing import Any

from sdd.actions import ActionServices, builtin_actions
from sdd.actions.services import NotifyFn
from sdd.config import Config
from sdd.engine import ActionSpec, Workflow
from sdd.engine.registry import discover_entry_points
from sdd.executor import SocketExecutor
from sdd.executor.spawn import SOCKET_ENV
from sdd.store import Store


def load_actions(config: Config, store: Store | None,
                 notify: NotifyFn | None) -> tuple[ActionServices, list[ActionSpec], list[str]]:
    """(ActionServices, the built-in + plugin ActionSpecs, errors). Never raises: a broken plugin is listed."""
    errors: list[str] = []
    services = ActionServices(config.actions, config.paths.state, store, notify, executor=executor_seam())
    specs = list(builtin_actions(services))
    try:
        plugins, plugin_errors = discover_entry_points()
    except Exception as exc:  # noqa: BLE001 -- must not stop the daemon
        plugins, plugin_errors = [], [f"action plugins: {exc}"]
    names = {s.name for s in specs}
    for spec in plugins:
        if spec.name in names:
            errors.append(f"action plugin {spec.name!r} ignored: a built-in action has that name")
        else:
            specs.append(spec)
    errors.extend(str(e) for e in plugin_errors)
    errors.extend(scripts_dir_problems(config))
    errors.extend(yara_rules_problems(config))
    return services, specs, errors


def executor_seam() -> SocketExecutor | None:
    """The root executor's client when this daemon runs unprivileged beside one (system mode); else None:
    the actions then run the primitives in-process (user mode, or one root process)."""

    path = os.environ.get(SOCKET_ENV)
    return SocketExecutor(path) if path else None


def separated() -> bool:
    """This daemon runs as the unprivileged user beside a root executor: system-mode rules still hold."""
    return bool(os.environ.get(SOCKET_ENV))


def scripts_dir_problems(config: Config) -> list[str]:
    """In system mode, `[actions] scripts_dir` (when it exists) must be root's all the way from / and
    writable by no one else, or run_script would run what a user can change; run_script checks again."""
    return _root_owned_problems(config, "scripts_dir", config.actions.scripts_dir, "its scripts would run as root")


def yara_rules_problems(config: Config) -> list[str]:
    """`[actions] yara_rules` is held to the same rule: its rules decide what root quarantines. run_scan
    checks again, and each rule file."""
    return _root_owned_problems(config, "yara_rules", config.actions.yara_rules,
                                "its rules decide what is quarantined as root")


def _root_owned_problems(config: Config, key: str, directory: Any, why: str) -> list[str]:
    from sdd.engine import path_problem

    if config.user_mode or (os.geteuid() != 0 and not separated()) or not os.path.lexists(directory):
        return []
    reason = path_problem(os.path.abspath(directory))
    return [f"{config.source or 'config'}: actions.{key} refused: {reason} ({why})"] if reason else []


def load_workflows(config: Config, actions: list[ActionSpec]) -> tuple[dict[str, Workflow], list[str]]:
    """Every workflow of `paths.workflows` (later dirs override the same id) and every problem found.

    In system mode a file or directory writable by anyone but root is refused: its steps run as root."""
    from sdd.engine.specs import loader

    require_root = not config.user_mode and (os.geteuid() == 0 or separated())
    found, issues = loader.load_workflow_dirs(config.paths.workflows, actions, require_root_owned=require_root)
    return dict(found), [str(i) for i in issues]


# The actions that read the run log (ActionServices.run_log): a run of a workflow without any of them need
# not feed it, which saves the daemon tens of microseconds per run.
RUN_LOG_READERS = frozenset({"generate_report"})


def reads_run_log(workflow: Workflow, workflows: Mapping[str, Workflow]) -> bool:
    """Whether a run of `workflow` may reach a step that reads the run log: any of its steps, its children,
    or a sub-workflow it names (resolved in `workflows`; one that cannot be resolved here counts as yes)."""
    seen: set[str] = set()

    def steps_read(steps: Iterable[Any]) -> bool:
        for step in steps:
            if step.action in RUN_LOG_READERS or step.rollback_action in RUN_LOG_READERS:
                return True
            if steps_read(step.steps):
                return True
            for case in step.conditions:
                if steps_read(case.steps) or (case.workflow is not None and workflow_reads(case.workflow)):
                    return True
            if step.workflow_id is not None and workflow_reads(step.workflow_id):
                return True
        return False

    def workflow_reads(workflow_id: str) -> bool:
        if workflow_id in seen:
            return False
        seen.add(workflow_id)
        child = workflows.get(workflow_id)
        return True if child is None else steps_read(child.steps)

    return steps_read(workflow.steps)


# Net new container objects that start a young collection (CPython's default: 700). A burst's work lives for
# milliseconds and is freed by reference counting, yet its peaks (a batch of detections read at once, their
# runs, their events) crossed 700 about 1,250 times a 10,000-file burst: 1,250 young and 115 middle
# collections that found nothing, 4-5 % of the burst's wall time, and each walked what was alive. At 20,000
# no collection ran in a burst, watched or not (see docs/performance.md). What is cyclic garbage waits longer
# to go, at most about this many objects' worth.
YOUNG_COLLECTION_THRESHOLD = 20_000


def freeze_long_lived() -> None:
    """What is loaded by now (modules, actions, workflows, schemas) lives as long as the process, or until the
    next reload: take it out of the cyclic collector's sight, or every full collection in a burst walks all of
    it again (measured: ~10% of burst throughput). Later garbage is collected as usual; on a reload the set it
    replaced is unfrozen first, so it can go (as can the few objects of runs that were in flight). Young
    collections start at `YOUNG_COLLECTION_THRESHOLD` new objects, not at 700."""
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
    gc.unfreeze()
    gc.collect()
    gc.freeze()
