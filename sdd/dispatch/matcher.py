"""Where it is decided what to do with a detection: which workflows it triggers, or why it triggers none.

Pure functions over the workflow set and one detection (plus a small in-memory window for de-duplication),
so they are tested without a daemon. The rules (contract "Workflows", issue 4):
- a workflow is a candidate when its `trigger.type` (a string or a list; "*" matches any type) names the
  detection's type and its `trigger.when` expression is true; a `when` that fails to evaluate is a
  non-match, logged with the workflow and the error;
- the highest `priority` among the candidates wins; all candidates with that priority run;
- an excluded hash or path starts nothing (`excluded`); the same (workflow, file_path, threat_name) inside
  `dedup_window` seconds is a `duplicate`; a detection whose external `id` was seen is a duplicate too
  (the store finds that one, since it must survive restarts).
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from sdd.engine import Workflow
from sdd.engine.errors import ExpressionError
from sdd.engine.expressions import Expression, compile_expression, evaluate_condition
from sdd.logging import kv

log = logging.getLogger(__name__)


class Decision(str, Enum):
    MATCHED = "matched"
    NO_MATCH = "no_match"
    DUPLICATE = "duplicate"
    EXCLUDED = "excluded"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class MatchResult:
    decision: Decision
    workflows: tuple[Workflow, ...] = ()
    duplicate_of: str | None = None
    note: str = ""


_compiled: OrderedDict[str, Expression] = OrderedDict()


def _compile(text: str) -> Expression:
    # Compiling parses and checks the expression; a few hundred workflows' `when`s fit in a small cache.
    expr = _compiled.get(text)
    if expr is None:
        expr = compile_expression(text)
        _compiled[text] = expr
        if len(_compiled) > 512:
            _compiled.popitem(last=False)
    else:
        _compiled.move_to_end(text)
    return expr


def triggers_on(workflow: Workflow, detection: Mapping[str, Any]) -> bool:
    """True when the workflow's trigger type and `when` match this detection."""
    trig = workflow.trigger
    if trig is None or not trig.types:
        return False
    kind = detection.get("type")
    if kind not in trig.types and "*" not in trig.types:
        return False
    if trig.when is None:
        return True
    names = {"detection": detection, "context": dict(workflow.context or {}), "steps": {}}
    try:
        return evaluate_condition(_compile(trig.when), names)
    except ExpressionError as exc:
        log.warning("trigger condition failed", extra=kv(workflow=workflow.workflow_id, error=exc))
        return False


def candidates(workflows: Mapping[str, Workflow], detection: Mapping[str, Any]) -> list[Workflow]:
    """The workflows this detection starts: the matching ones with the highest priority, by id."""
    matching = [wf for wf in workflows.values() if triggers_on(wf, detection)]
    if not matching:
        return []
    top = max(wf.trigger.priority for wf in matching if wf.trigger is not None)
    return sorted((wf for wf in matching if wf.trigger is not None and wf.trigger.priority == top),
                  key=lambda wf: wf.workflow_id)


@dataclass
class DedupWindow:
    """(workflow, file_path, threat_name) → the first detection seen inside the window; bounded in size."""

    window: float = 60.0
    max_entries: int = 100_000
    _seen: OrderedDict[tuple[str, str, str], tuple[float, str]] = field(default_factory=OrderedDict)

    def _prune(self, now: float) -> None:
        while self._seen:
            key, (when, _) = next(iter(self._seen.items()))
            if now - when <= self.window and len(self._seen) <= self.max_entries:
                break
            del self._seen[key]

    def check(self, workflow_id: str, detection: Mapping[str, Any], now: float) -> str | None:
        """The detection this one repeats inside the window, if any (nothing is remembered)."""
        key = _dedup_key(workflow_id, detection)
        if key is None or self.window <= 0:
            return None
        self._prune(now)
        hit = self._seen.get(key)
        return hit[1] if hit is not None and now - hit[0] <= self.window else None

    def remember(self, workflow_id: str, detection: Mapping[str, Any], detection_id: str, now: float) -> None:
        key = _dedup_key(workflow_id, detection)
        if key is None or self.window <= 0:
            return
        self._seen[key] = (now, detection_id)
        self._seen.move_to_end(key)
        self._prune(now)

    def clear(self) -> None:
        self._seen.clear()


def _dedup_key(workflow_id: str, detection: Mapping[str, Any]) -> tuple[str, str, str] | None:
    path = detection.get("file_path")
    if not isinstance(path, str) or not path:
        return None  # without a file there is nothing to say two detections are "the same"
    threat = detection.get("threat_name")
    return workflow_id, path, threat if isinstance(threat, str) else ""


@dataclass(frozen=True)
class Exclusions:
    """Excluded hashes and paths, in memory: the matcher checks every detection, the table rarely changes."""

    sha256: frozenset[str] = frozenset()
    paths: frozenset[str] = frozenset()

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> Exclusions:
        sha = frozenset(str(r["value"]).lower() for r in rows if r.get("kind") == "sha256")
        paths = frozenset(str(r["value"]) for r in rows if r.get("kind") == "path")
        return cls(sha, paths)

    def excludes(self, detection: Mapping[str, Any]) -> bool:
        """The detection's `sha256`, or its `file_path` or a directory above it, is excluded."""
        if self.sha256:
            sha = detection.get("sha256")
            if isinstance(sha, str) and sha.lower() in self.sha256:
                return True
        if self.paths:
            path = detection.get("file_path")
            if isinstance(path, str) and path.startswith("/"):
                path = posixpath.normpath(path)
                while True:
                    if path in self.paths:
                        return True
                    parent = posixpath.dirname(path)
                    if parent == path:
                        break
                    path = parent
        return False


def match(workflows: Mapping[str, Workflow], detection: Mapping[str, Any], detection_id: str, *,
          excluded: bool = False, dedup: DedupWindow | None = None, now: float | None = None) -> MatchResult:
    """Decides what one detection starts. Remembers it in `dedup` when it starts something."""
    if excluded:
        return MatchResult(Decision.EXCLUDED, note="excluded hash or path")
    chosen = candidates(workflows, detection)
    if not chosen:
        return MatchResult(Decision.NO_MATCH, note="no workflow triggers on it")
    now = time.time() if now is None else now
    if dedup is not None:
        fresh = []
        first = None
        for wf in chosen:
            prior = dedup.check(wf.workflow_id, detection, now)
            if prior is None:
                fresh.append(wf)
            elif first is None:
                first = prior
        if not fresh:
            return MatchResult(Decision.DUPLICATE, duplicate_of=first,
                               note=f"same file and threat as {first} within {dedup.window:g}s")
        for wf in fresh:
            dedup.remember(wf.workflow_id, detection, detection_id, now)
        chosen = fresh
    return MatchResult(Decision.MATCHED, tuple(chosen), note=", ".join(wf.workflow_id for wf in chosen))
