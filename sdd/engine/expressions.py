"""The one safe expression language of workflows: `condition`, trigger `when`, branch `if`, and `{{ }}`
inside strings. Built on simpleeval (no eval/exec), narrowed further:

- it sees only the names it is given (`context`, `detection`, `steps`) plus a few pure functions;
- `a.b` on a mapping reads key `b` (data wins over methods), and only a short list of read-only methods
  may be called (`get`, `keys`, `values`, `items`, `lower`, `startswith`, ...); nothing starting with `_`;
- every expression is bounded before it runs (length, bracket depth, syntax-tree depth) and while it runs
  (string/list sizes, power and shift sizes, no comprehensions, no f-strings, no `%`-formatting of
  strings), so hostile text fails with `ExpressionError` in bounded time and memory;
- parsed trees are cached, and a template string is split into parts once.
"""

from __future__ import annotations

import ast
import json
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ExpressionError
from .sandbox import NAMES, _evaluator, _kind

MAX_EXPRESSION_LENGTH = 2000      # characters in one expression
MAX_NESTING = 32                  # bracket nesting before parsing
MAX_TREE_DEPTH = 48               # syntax-tree depth after parsing
MAX_TEMPLATE_RESULT = 1_000_000   # characters of a rendered template string
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


# ---- templates -----------------------------------------------------------------------------------------

class Template:
    """A string with `{{ expr }}` parts, or a single whole `{{ expr }}` that keeps the value's type."""

    __slots__ = ("parts", "whole")

    def __init__(self, parts: list[str | Expression], whole: Expression | None):
        self.parts = parts
        self.whole = whole

    def render(self, names: Mapping[str, Any]) -> Any:
        if self.whole is not None:
            return evaluate(self.whole, names)
        out = []
        total = 0
        for part in self.parts:
            text = part if isinstance(part, str) else _to_text(evaluate(part, names))
            total += len(text)
            if total > MAX_TEMPLATE_RESULT:
                raise ExpressionError(f"rendered text is longer than {MAX_TEMPLATE_RESULT}")
            out.append(text)
        return "".join(out)

    def expressions(self) -> list[Expression]:
        return [self.whole] if self.whole is not None else [p for p in self.parts if isinstance(p, Expression)]


def _to_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        try:
            return json.dumps(value, default=str)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def compile_template(text: str) -> Template | None:
    """None for a plain string (nothing to render); raises ExpressionError for a bad `{{ }}`."""
    if "{{" not in text:
        return None
    parts: list[str | Expression] = []
    pos = 0
    while True:
        start = text.find("{{", pos)
        if start < 0:
            if pos < len(text):
                parts.append(text[pos:])
            break
        end = text.find("}}", start + 2)
        if end < 0:
            raise ExpressionError(f"'{{{{' at character {start} is never closed with '}}}}'", text)
        if start > pos:
            parts.append(text[pos:start])
        parts.append(compile_expression(text[start + 2:end]))
        pos = end + 2
    if len(parts) == 1 and isinstance(parts[0], Expression):
        return Template(parts, parts[0])
    stripped = text.strip()
    if stripped != text:
        inner = compile_template(stripped)
        if inner is not None and inner.whole is not None:
            return inner
    return Template(parts, None)


class Renderer:
    """A compiled value (dict/list/str tree) that renders to a fresh value; None from compile_value means
    the value has no templates and is used as is (no copy)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Mapping[str, Any]], Any]):
        self.fn = fn

    def render(self, names: Mapping[str, Any]) -> Any:
        return self.fn(names)


def compile_value(value: Any) -> Renderer | None:
    """Compile every template inside `value` once; None when nothing in it needs rendering."""
    if isinstance(value, str):
        tpl = compile_template(value)
        return None if tpl is None else Renderer(tpl.render)
    if isinstance(value, Mapping):
        compiled = {k: compile_value(v) for k, v in value.items()}
        if all(c is None for c in compiled.values()):
            return None
        items = [(k, value[k], c) for k, c in compiled.items()]

        def render_map(names: Mapping[str, Any]) -> dict[Any, Any]:
            return {k: (v if c is None else c.fn(names)) for k, v, c in items}
        return Renderer(render_map)
    if isinstance(value, (list, tuple)):
        seq = [(v, compile_value(v)) for v in value]
        if all(c is None for _, c in seq):
            return None

        def render_seq(names: Mapping[str, Any]) -> list[Any]:
            return [v if c is None else c.fn(names) for v, c in seq]
        return Renderer(render_seq)
    return None


def render(value: Any, names: Mapping[str, Any]) -> Any:
    """Render `{{ }}` in strings, recursively through dicts and lists. Values produced by expressions
    (detection data included) are inserted as data and never rendered again."""
    compiled = compile_value(value)
    return value if compiled is None else compiled.render(names)


def template_expressions(value: Any) -> list[str]:
    """Every expression text inside `value`'s templates (for validation); raises ExpressionError."""
    out: list[str] = []
    if isinstance(value, str):
        tpl = compile_template(value)
        if tpl is not None:
            out.extend(e.text for e in tpl.expressions())
    elif isinstance(value, Mapping):
        for v in value.values():
            out.extend(template_expressions(v))
    elif isinstance(value, (list, tuple)):
        for v in value:
            out.extend(template_expressions(v))
    return out


__all__ = [
    "NAMES",
    "Expression",
    "Renderer",
    "Template",
    "check_syntax",
    "compile_expression",
    "compile_template",
    "compile_value",
    "evaluate",
    "evaluate_condition",
    "render",
]
