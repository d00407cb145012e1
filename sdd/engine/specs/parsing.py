"""Reading YAML for workflows: composing one document into a node tree first (SafeLoader), so every issue
can name its file:line:column (`Marks`), refusing documents whose aliases expand beyond a bound or whose
aliases contain themselves before anything walks them, and only then constructing the data.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import ValidationIssue
from .issues import Marks, format_path

MAX_NODES = 100_000
# Collections nested in each other, at most (a workflow needs a handful). Without a bound, `[[[[...` of a few
# thousand brackets cost the scanner over a second (it scans ahead over every open flow collection, each a
# possible key), on the daemon's event loop for a `workflows.validate` from any user of the socket.
MAX_NESTING = 64


def _expanded_size(node: yaml.Node) -> int:
    memo: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        memo[key] = 1  # guards recursive aliases
        total = 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k) + size(v)
        elif isinstance(n, yaml.SequenceNode):
            for v in n.value:
                total += size(v)
        memo[key] = total
        return total
    return size(node)


def _marks(node: yaml.Node, source: str) -> tuple[Marks, list[ValidationIssue]]:
    values: dict[tuple[Any, ...], tuple[int, int]] = {}
    keys: dict[tuple[Any, ...], tuple[int, int]] = {}
    issues: list[ValidationIssue] = []
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[Any, ...]]] = [(node, ())]
    while stack:
        n, path = stack.pop()
        values.setdefault(path, (n.start_mark.line + 1, n.start_mark.column + 1))
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            first: dict[Any, int] = {}
            for k, v in n.value:
                if not isinstance(k, yaml.ScalarNode) or k.value == "<<":
                    continue
                key = k.value
                if key in first:
                    issues.append(ValidationIssue(source, k.start_mark.line + 1, k.start_mark.column + 1,
                                                  format_path(path + (key,)),
                                                  f"duplicate key {key!r} (first given on line {first[key]})"))
                    continue
                first[key] = k.start_mark.line + 1
                keys[path + (key,)] = (k.start_mark.line + 1, k.start_mark.column + 1)
                stack.append((v, path + (key,)))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                stack.append((v, path + (i,)))
    return Marks(values, keys), issues


class _TooLarge(yaml.composer.ComposerError):
    """More than MAX_NODES nodes: not a syntax error, so reported without that word."""


class _Composer(yaml.SafeLoader):
    """SafeLoader that notices an alias used inside the value it names (`a: &x [*x]`): such a document is a
    value that contains itself, which nothing downstream (schema, semantic checks, the runner) can walk."""

    def __init__(self, text: str):
        super().__init__(text)
        self._open: list[tuple[str, Any]] = []           # (anchor, its mark) of values being composed
        self.recursive: tuple[str, Any, Any] | None = None   # (anchor, alias mark, anchor mark)
        self._depth = 0                                        # collections being composed
        self._nodes = 0                                        # nodes composed so far (aliases once)

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # (PyYAML's name for the argument)
        if self.flow_level >= MAX_NESTING:
            raise yaml.scanner.ScannerError(None, None, f"collections nest deeper than {MAX_NESTING} levels",
                                            self.get_mark())
        super().fetch_flow_collection_start(TokenClass)  # type: ignore[misc]

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: Any = self.peek_event()
        self._nodes += 1
        if self._nodes > MAX_NODES:  # stop here: composing all of a large document costs ~45 µs a node
            start: Any = event.start_mark
            raise _TooLarge(None, None, f"the document is too large (more than {MAX_NODES} values)", start)
        if not isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            return self._compose_node(parent, index, event)
        if self._depth >= MAX_NESTING:  # (block collections: the scanner bounds the flow ones)
            start = event.start_mark  # (Any: the stubs allow libyaml's Mark here; this loader is pure Python)
            raise yaml.composer.ComposerError(None, None, f"collections nest deeper than {MAX_NESTING} levels",
                                              start)
        self._depth += 1
        try:
            return self._compose_node(parent, index, event)
        finally:
            self._depth -= 1

    def _compose_node(self, parent: yaml.Node | None, index: Any, event: Any) -> yaml.Node | None:
        if isinstance(event, yaml.AliasEvent):
            if self.recursive is None:
                for name, mark in self._open:
                    if name == event.anchor:
                        self.recursive = (name, event.start_mark, mark)
                        break
            return super().compose_node(parent, index)
        anchor: str | None = getattr(event, "anchor", None)
        if anchor is None:
            return super().compose_node(parent, index)
        self._open.append((anchor, event.start_mark))
        try:
            return super().compose_node(parent, index)
        finally:
            self._open.pop()


def parse_yaml(text: str, source: str) -> tuple[Any, Marks, list[ValidationIssue]]:
    """(data, marks, issues) of one YAML document, never raising for bad input."""
    loader = _Composer(text)
    try:
        node = loader.get_single_node()
        if loader.recursive is not None:
            anchor, at, defined = loader.recursive
            return None, Marks(), [ValidationIssue(
                source, at.line + 1, at.column + 1, "",
                f"the alias *{anchor} is used inside the value it names (anchored &{anchor} on line "
                f"{defined.line + 1}): a value may not contain itself")]
        if node is None:
            return None, Marks(), [ValidationIssue(source, 1, 1, "", "empty workflow file")]
        if _expanded_size(node) > MAX_NODES:
            return None, Marks(), [ValidationIssue(source, 1, 1, "",
                                                   f"the document is too large (more than {MAX_NODES} "
                                                   "values once aliases are expanded)")]
        marks, issues = _marks(node, source)
        data = loader.construct_document(node)
        return data, marks, issues
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        what = " ".join(x for x in (exc.context, exc.problem) if x)
        if not isinstance(exc, _TooLarge):
            what = f"YAML syntax error: {what}"
        return None, Marks(), [ValidationIssue(source, line, col, "", what)]
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        return None, Marks(), [ValidationIssue(source, None, None, "", f"YAML error: {exc}")]
    finally:
        loader.dispose()


__all__ = ["MAX_NESTING", "MAX_NODES", "parse_yaml"]
