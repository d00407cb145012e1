"""The one safe expression language of workflows (`condition`, trigger `when`, branch `if`, and `{{ }}`
inside strings, see `templates.py`): parsing once with bounds, caching, evaluating. Built on simpleeval
(no eval/exec, the evaluator is `sandbox.py`), narrowed further:

- it sees only the names it is given (`context`, `detection`, `steps`) plus a few pure functions;
- `a.b` on a mapping reads key `b` (data wins over methods), and only a short list of read-only methods
  may be called (`get`, `keys`, `values`, `items`, `lower`, `startswith`, ...); nothing starting with `_`;
- every expression is bounded before it runs (length, bracket depth, syntax-tree depth) and while it runs
  (string/list sizes, power and shift sizes, no comprehensions, no f-strings, no `%`-formatting of
  strings), so hostile text fails with `ExpressionError` in bounded time and memory;
- parsed trees are cached.
"""

from __future__ import annotations

import ast
import threading
import warnings
from collections.abc import Mapping
from typing import Any

from ..errors import ExpressionError
from .sandbox import NAMES, _evaluator, _kind

MAX_EXPRESSION_LENGTH = 2000      # characters in one expression
MAX_NESTING = 32                  # bracket nesting before parsing
MAX_TREE_DEPTH = 48               # syntax-tree depth after parsing
_CACHE_LIMIT = 4096

# ---- compiling -----------------------------------------------------------------------------------------

class Expression:
    """A parsed, checked expression; evaluate it many times."""

    __slots__ = ("node", "text")

    def __init__(self, text: str, node: ast.AST):
        self.text = text
        self.node = node

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


_cache: dict[str, Expression] = {}
_cache_lock = threading.Lock()


def _check_nesting(text: str) -> None:
    depth = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            if depth > MAX_NESTING:
                raise ExpressionError(f"nested more than {MAX_NESTING} brackets deep", text)
        elif ch in ")]}":
            depth -= 1


def _check_tree_depth(tree: ast.AST, text: str) -> None:
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_TREE_DEPTH:
            raise ExpressionError(f"expression is nested too deeply (more than {MAX_TREE_DEPTH} levels)", text)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def compile_expression(text: str) -> Expression:
    """Parse and check `text` once (cached); raises ExpressionError with a readable reason."""
    cached = _cache.get(text) if isinstance(text, str) else None
    if cached is not None:
        return cached
    if not isinstance(text, str):
        raise ExpressionError(f"an expression must be a string, not {_kind(text)}")
    stripped = text.strip()
    if not stripped:
        raise ExpressionError("empty expression", text)
    if len(stripped) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_EXPRESSION_LENGTH} characters", text[:80])
    _check_nesting(stripped)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = ast.parse(stripped, mode="eval")
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        raise ExpressionError(f"invalid expression{where}: {exc.msg}", text) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ExpressionError(f"invalid expression: {type(exc).__name__}", text) from None
    _check_tree_depth(module, text)
    expr = Expression(text, module.body)
    with _cache_lock:
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        _cache[text] = expr
    return expr


def check_syntax(expr: str) -> str | None:
    """None when `expr` is a valid expression, else the reason it is not."""
    try:
        compile_expression(expr)
    except ExpressionError as exc:
        return str(exc)
    return None


# ---- evaluating ----------------------------------------------------------------------------------------

def evaluate(expr: str | Expression, names: Mapping[str, Any]) -> Any:
    """The value of `expr` with `names` in scope; every failure is an ExpressionError."""
    compiled = expr if isinstance(expr, Expression) else compile_expression(expr)
    ev = _evaluator()
    saved = ev.names
    ev.names = names
    try:
        return ev._eval(compiled.node)
    except ExpressionError as exc:
        if exc.expression is None:
            exc.expression = compiled.text
        raise
    except (RecursionError, MemoryError) as exc:
        raise ExpressionError(f"{compiled.text!r}: too costly to evaluate ({type(exc).__name__})",
                              compiled.text) from None
    except Exception as exc:  # noqa: BLE001 - anything the data or simpleeval raises is the expression's failure
        raise ExpressionError(f"{_short(compiled.text)}: {type(exc).__name__}: {_clip(str(exc))}",
                              compiled.text) from None
    finally:
        ev.names = saved


def evaluate_condition(expr: str | Expression, names: Mapping[str, Any]) -> bool:
    """Like evaluate, but the result must be a boolean: no "the string 'false' is true" surprises."""
    value = evaluate(expr, names)
    if value is True or value is False:
        return value
    text = expr.text if isinstance(expr, Expression) else expr
    raise ExpressionError(f"condition {text!r} gave {_kind(value)} {_short(value)}, not true/false "
                          f"(compare it explicitly, e.g. '== \"yes\"' or 'is not None')", text)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = [
    "NAMES",
    "Expression",
    "check_syntax",
    "compile_expression",
    "evaluate",
    "evaluate_condition",
]
