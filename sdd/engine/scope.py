"""The names expressions see and the context handlers receive, one `Scope` per level of the step walk.

`steps.<id>` is a read-only view (`StepsView`) over a run's results (or a plan's assumed ones), built on demand.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .expressions.sandbox import SAFE_MAPPING_TYPES
from .results import StepResult


class StepsView(Mapping[str, Any]):
    """`steps.<id>` in expressions: {status, result, error, attempts} built on demand from the results.
    Inside a loop item or a composite, ids resolve to the nearest enclosing scope first, then to the top
    level, then to the last step recorded under that id (`local_ids`)."""

    __slots__ = ("local_ids", "prefix", "results")

    def __init__(self, results: dict[str, StepResult], local_ids: dict[str, str], prefix: str = ""):
        self.results, self.local_ids, self.prefix = results, local_ids, prefix

    def _find(self, key: str) -> StepResult | None:
        results = self.results
        if self.prefix:
            sr = results.get(self.prefix + key)
            if sr is not None:
                return sr
        sr = results.get(key)
        if sr is None:
            path = self.local_ids.get(key)
            if path is not None:
                sr = results.get(path)
        return sr

    def __getitem__(self, key: str) -> Any:
        sr = self._find(key)
        if sr is None:
            raise KeyError(key)
        return {"status": sr.status.value, "result": sr.result, "error": sr.error, "attempts": sr.attempts}

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)


SAFE_MAPPING_TYPES.add(StepsView)


class Scope:
    """What steps at one level share: the names for expressions and the context handlers receive."""

    __slots__ = ("context", "depth", "names", "prefix", "workflow_id")

    def __init__(self, names: dict[str, Any], context: dict[str, Any], prefix: str, depth: int,
                 workflow_id: str):
        self.names, self.context, self.prefix, self.depth, self.workflow_id = (
            names, context, prefix, depth, workflow_id)

    def child(self, prefix: str, results: dict[str, StepResult], local_ids: dict[str, str], *,
              context: dict[str, Any] | None = None, depth: int | None = None,
              workflow_id: str | None = None) -> Scope:
        """The scope of the steps under `prefix` (a loop item with its own context, a composite's children,
        a sub-workflow one level deeper)."""
        names = dict(self.names)
        if context is not None:
            names["context"] = context
        names["steps"] = StepsView(results, local_ids, prefix)
        return Scope(names, context if context is not None else self.context, prefix,
                     self.depth if depth is None else depth, workflow_id or self.workflow_id)


__all__ = ["Scope", "StepsView"]
