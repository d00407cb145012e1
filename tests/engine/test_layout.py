"""The engine's layout holds: no import cycles among its modules (imports inside functions and under
TYPE_CHECKING included), nothing imported from the rest of sdd, and every name `sdd.engine` exported before
the specs/expressions split is still exported."""

from __future__ import annotations

import ast
from pathlib import Path

import sdd.engine
from sdd.engine.specs.semantic_check import find_cycles

ENGINE = Path(sdd.engine.__file__).resolve().parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(ENGINE.parent.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ENGINE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: {t for t in _imports(name, path, known) if t in known and t != name}
            for name, path in modules.items()}


def test_engine_modules_import_each_other_without_cycles() -> None:
    assert find_cycles(_graph()) == []
    assert find_cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]   # the check itself finds one


def test_the_graph_sees_deferred_and_type_checking_imports(tmp_path: Path) -> None:
    probe = tmp_path / "runner.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import x\n"
                     "def f():\n    from .c import y\n")
    known = {"sdd.engine.runner", "sdd.engine.b", "sdd.engine.c"}
    assert _imports("sdd.engine.runner", probe, known) >= {"sdd.engine.b", "sdd.engine.c"}


def test_the_engine_imports_nothing_else_from_sdd() -> None:
    outside = {(name, t) for name, path in _modules().items() for t in _imports(name, path, set(_modules()))
               if t.startswith("sdd.") and not t.startswith("sdd.engine")}
    assert outside == set()


def test_every_name_exported_before_the_split_is_still_exported() -> None:
    before = {"ActionError", "ActionSpec", "BranchCase", "Conflict", "EngineError", "EngineEvent", "ExpressionError",
              "Forbidden", "InvalidParams", "Listener", "NonRetryableError", "NotFound", "PriorStep", "RunFinished",
              "RunHandle", "RunStarted", "RunStatus", "Schedule", "StepFinished", "StepInfo", "StepResult",
              "StepStarted", "StepStatus", "StepTimeout", "Trigger", "ValidationIssue", "Workflow",
              "WorkflowEngine", "WorkflowResult", "WorkflowStep", "WorkflowValidationError", "check_syntax",
              "current_step", "evaluate", "evaluate_condition", "load_text", "load_workflow",
              "load_workflow_dirs", "new_run_id", "render", "validate_text"}
    assert before <= set(sdd.engine.__all__)
    assert all(hasattr(sdd.engine, n) for n in sdd.engine.__all__)
    from sdd.engine.expressions import Expression, compile_expression, evaluate_condition  # the matcher's
    from sdd.engine.registry import StepInfo, current_step  # the actions'
    assert Expression and compile_expression and evaluate_condition and StepInfo and current_step


def test_the_model_is_plain_data() -> None:
    imported = _imports("sdd.engine.specs.model", ENGINE / "specs" / "model.py", set(_modules()))
    assert {m for m in imported if m.startswith("sdd.")} == {"sdd.engine.specs.vocabulary"}
    assert not {"yaml", "jsonschema"} & imported
