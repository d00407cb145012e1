"""`RunEnv`: the little a run needs from its engine — the actions, the listeners, how to find a sub-workflow
by id and how deep sub-workflows may nest — so a run never holds the engine itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .events import Listener
from .registry import ActionRegistry
from .specs.model import Workflow


@dataclass(frozen=True, slots=True)
class RunEnv:
    registry: ActionRegistry
    listeners: tuple[Listener, ...]
    find_workflow: Callable[[str], Workflow | None]   # a sub-workflow (or branch arm) by workflow_id
    max_depth: int


__all__ = ["RunEnv"]
