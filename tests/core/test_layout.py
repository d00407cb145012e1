"""The layout shows the architecture, and the imports keep to it: read from the source with `ast`, so imports
inside functions (and under TYPE_CHECKING) count as much as those at the top of a module.

A *part* is a package under `sdd/` (`sdd.engine`, `sdd.dispatch`, ...) or a top-level module (`sdd.hub`,
`sdd.config`, ...). The parts import each other without a cycle, and the lower layers never reach up.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import sdd

ROOT = Path(sdd.__file__).resolve().parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imported(path: Path) -> Iterator[tuple[str, int]]:
    """(module imported, line) for every import in the file, wherever it is, relative ones resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, node.lineno
            for alias in node.names:  # `from sdd import hub` imports the module sdd.hub
                if _is_module(f"{target}.{alias.name}"):
                    yield f"{target}.{alias.name}", node.lineno


def part(module: str) -> str | None:
    """The part a module of sdd belongs to: `sdd.engine.specs.model` → `engine`, `sdd.hub` → `hub`."""
    pieces = module.split(".")
    if pieces[0] != "sdd" or len(pieces) < 2:
        return None
    return pieces[1]


@cache
def part_imports() -> dict[str, dict[str, list[str]]]:
    """part → imported part → where ("sdd/x/y.py:12"), for every import between two different parts."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        here = part(_module_name(path))
        if here is None:
            continue
        graph.setdefault(here, {})
        for target, line in _imported(path):
            there = part(target)
            if there is not None and there != here:
                graph[here].setdefault(there, []).append(f"{path.relative_to(ROOT.parent)}:{line}")
    return graph


def _cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def _reaches(graph: dict[str, dict[str, list[str]]], start: str, forbidden: set[str]) -> list[str]:
    """Every import by which `start` (directly) reaches one of `forbidden`."""
    return [where for target, sites in graph.get(start, {}).items() if target in forbidden for where in sites]


def test_the_parts_of_sdd_import_each_other_without_a_cycle() -> None:
    graph = part_imports()
    cycle = _cycle(graph)
    assert cycle is None, "import cycle between parts: " + " → ".join(cycle or []) + "; " + "; ".join(
        f"{a} → {b} at {graph[a][b][0]}" for a, b in zip(cycle or [], (cycle or [])[1:]))


def test_the_engine_knows_nothing_of_the_daemon_around_it() -> None:
    above = {"daemon", "dispatch", "history", "intake", "api", "bus", "fleet", "main", "labels"}
    assert _reaches(part_imports(), "engine", above) == []


def test_the_actions_know_nothing_of_the_api() -> None:
    assert _reaches(part_imports(), "actions", {"api", "daemon", "dispatch", "bus"}) == []


def test_intake_decides_nothing_and_remembers_nothing() -> None:
    """Where a detection enters knows nothing of where it is decided, acted on or remembered."""
    assert _reaches(part_imports(), "intake", {"dispatch", "engine", "history", "store", "daemon", "api",
                                               "bus"}) == []


def test_the_dispatcher_and_the_history_are_not_built_on_the_daemon() -> None:
    graph = part_imports()
    assert _reaches(graph, "dispatch", {"daemon", "api", "bus", "history"}) == []
    assert _reaches(graph, "history", {"daemon", "dispatch", "api", "bus"}) == []


def test_the_graph_sees_deferred_imports() -> None:
    """The reader itself: an import inside a function counts (sdd.main imports the daemon only in one)."""
    assert "daemon" in part_imports()["main"]
