"""The names expressions see and the context handlers receive, one `Scope` per level of the step walk.

`steps.<id>` is a read-only view (`StepsView`) over the run's results, built on demand.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .results import StepResult
from .sandbox import SAFE_MAPPING_TYPES

if TYPE_CHECKING:
    from .runner import Run


class StepsView(Mapping[str, Any]):
    """`steps.<id>` in expressions: {status, result, error, attempts} built on demand from the results.
    Inside a loop item or a composite, ids resolve to the nearest enclosing scope first."""

    __slots__ = ("prefix", "run")

    def __init__(self, run: Run, prefix: str = ""):
        self.run, self.prefix = run, prefix

    def _find(self, key: str) -> StepResult | None:
        results = self.run.step_results
        if self.prefix:
            sr = results.get(self.prefix + key)
            if sr is not None:
                return sr
        sr = results.get(key)
        if sr is None:
            path = self.run.local_ids.get(key)
            if path is not None:
                sr = results.get(path)
        return sr

    def __getitem__(self, key: str) -> Any:
        sr = self._find(key)
        if sr is None:
            raise KeyError(key)
        return {"status": sr.status.value, "result": sr.result, "error": sr.error, "attempts": sr.attempts}

    def __iter__(self) -> Iterator[str]:
        return iter(self.run.step_results)

    def __len__(self) -> int:
        return len(self.run.step_results)


SAFE_MAPPING_TYPES.add(StepsView)


class Scope:
    """What steps at one level share: the names for expressions and the context handlers receive."""

    __slots__ = ("context", "depth", "names", "prefix", "workflow_id")

    def __init__(self, names: dict[str, Any], context: dict[str, Any], prefix: str, depth: int,
                 workflow_id: str):
        self.names, self.context, self.prefix, self.depth, self.workflow_id = (
            names, context, prefix, depth, workflow_id)


__all__ = ["Scope", "StepsView"]
