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
import math
import operator as op
import posixpath
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from simpleeval import EvalWithCompoundTypes, safe_lshift, safe_rshift

from .errors import ExpressionError

MAX_EXPRESSION_LENGTH = 2000      # characters in one expression
MAX_NESTING = 32                  # bracket nesting before parsing
MAX_TREE_DEPTH = 48               # syntax-tree depth after parsing
MAX_SIZE = 100_000                # characters/items of any string or sequence an expression builds
MAX_POWER_BITS = 4096             # an integer power may not exceed this many bits
MAX_TEMPLATE_RESULT = 1_000_000   # characters of a rendered template string
_CACHE_LIMIT = 4096

NAMES = ("context", "detection", "steps")


# ---- operators and functions ---------------------------------------------------------------------------

def _size(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        return 0


def _add(a: Any, b: Any) -> Any:
    if _size(a) + _size(b) > MAX_SIZE:
        raise ExpressionError(f"result would be longer than {MAX_SIZE}")
    return a + b


def _mult(a: Any, b: Any) -> Any:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        raise ExpressionError("repeating lists with * is not allowed")
    if isinstance(a, str) or isinstance(b, str):
        text, times = (a, b) if isinstance(a, str) else (b, a)
        if isinstance(times, int) and len(text) * times > MAX_SIZE:
            raise ExpressionError(f"result would be longer than {MAX_SIZE}")
    return a * b


def _power(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool):
        if b > 0 and abs(a) > 1 and b * math.log2(abs(a)) > MAX_POWER_BITS:
            raise ExpressionError(f"{a} ** {b} is too large")
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(b) > 10_000:
        raise ExpressionError(f"exponent {b} is too large")
    return a**b


def _mod(a: Any, b: Any) -> Any:
    if isinstance(a, (str, bytes)):
        raise ExpressionError("'%' formatting of strings is not allowed")
    return a % b


def _contains(container: Any, item: Any) -> bool:
    return item in container


OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: _add, ast.Sub: op.sub, ast.Mult: _mult, ast.Div: op.truediv, ast.FloorDiv: op.floordiv,
    ast.Mod: _mod, ast.Pow: _power, ast.LShift: safe_lshift, ast.RShift: safe_rshift,
    ast.BitOr: op.or_, ast.BitAnd: op.and_, ast.BitXor: op.xor, ast.Invert: op.invert,
    ast.Eq: op.eq, ast.NotEq: op.ne, ast.Gt: op.gt, ast.Lt: op.lt, ast.GtE: op.ge, ast.LtE: op.le,
    ast.Not: op.not_, ast.USub: op.neg, ast.UAdd: op.pos,
    ast.In: lambda x, y: _contains(y, x), ast.NotIn: lambda x, y: not _contains(y, x),
    ast.Is: lambda x, y: x is y, ast.IsNot: lambda x, y: x is not y,
}


def _bounded(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        for a in args:
            if _size(a) > MAX_SIZE:
                raise ExpressionError(f"{fn.__name__}() argument is longer than {MAX_SIZE}")
        return fn(*args, **kwargs)
    call.__name__ = fn.__name__
    return call


def _sum(values: Any, start: float = 0) -> Any:
    if isinstance(start, bool) or not isinstance(start, (int, float)):
        raise ExpressionError("sum() adds numbers only")
    return sum(values, start)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len, "int": int, "float": float, "str": str, "bool": bool, "abs": abs, "min": min, "max": max,
    "sum": _sum, "any": any, "all": all, "sorted": _bounded(sorted), "list": _bounded(list),
    "tuple": _bounded(tuple), "set": _bounded(set), "dict": dict, "basename": posixpath.basename,
    "dirname": posixpath.dirname,
}

# Read-only methods an expression may call, per kind of value.
_MAPPING_METHODS = frozenset({"get", "keys", "values", "items"})
_STR_METHODS = frozenset({
    "lower", "upper", "casefold", "strip", "lstrip", "rstrip", "startswith", "endswith", "split", "rsplit",
    "splitlines", "partition", "rpartition", "find", "rfind", "count", "index", "rindex", "isdigit",
    "isalpha", "isalnum", "isspace", "islower", "isupper", "isnumeric", "removeprefix", "removesuffix",
    "title", "capitalize",
})
_SEQ_METHODS = frozenset({"count", "index"})


# Methods are only called on these exact types (not subclasses): a look-alike object a handler left in the
# context must not get its own `get()` called. The runner adds its read-only `steps` view.
SAFE_MAPPING_TYPES: set[type] = {dict, MappingProxyType}
_NO_METHODS: frozenset[str] = frozenset()


def _methods_for(value: Any) -> frozenset[str]:
    t = type(value)
    if t in SAFE_MAPPING_TYPES:
        return _MAPPING_METHODS
    if t is str:
        return _STR_METHODS
    if t is list or t is tuple:
        return _SEQ_METHODS
    return _NO_METHODS


def _kind(value: Any) -> str:
    return type(value).__name__


# ---- the evaluator -------------------------------------------------------------------------------------

class _Evaluator(EvalWithCompoundTypes):
    """simpleeval with our node set, attribute/call/subscript rules and no per-node container walks."""

    def __init__(self) -> None:
        super().__init__(operators=dict(OPERATORS), functions=dict(FUNCTIONS), names={})
        for node in (ast.ListComp, ast.GeneratorExp, ast.DictComp, ast.SetComp, ast.JoinedStr,
                     ast.FormattedValue, ast.Assign, ast.AugAssign, ast.Import, ast.ImportFrom, ast.Lambda,
                     ast.NamedExpr):
            self.nodes.pop(node, None)
        self.nodes[ast.Name] = self._name
        self.nodes[ast.Attribute] = self._attribute
        self.nodes[ast.Call] = self._call
        self.nodes[ast.Subscript] = self._subscript
        self.nodes[ast.Expr] = self._expr

    def _eval(self, node: ast.AST) -> Any:
        try:
            handler = self.nodes[type(node)]
        except KeyError:
            raise ExpressionError(f"{type(node).__name__} is not allowed in expressions") from None
        return handler(node)

    def _expr(self, node: ast.Expr) -> Any:
        return self._eval(node.value)

    def _name(self, node: ast.Name) -> Any:
        try:
            return self.names[node.id]
        except KeyError:
            raise ExpressionError(
                f"unknown name {node.id!r} (expressions see {', '.join(NAMES)})") from None

    def _attribute(self, node: ast.Attribute) -> Any:
        attr = node.attr
        if attr.startswith("_"):
            raise ExpressionError(f"attribute {attr!r} is not allowed")
        base = self._eval(node.value)
        if isinstance(base, Mapping):
            try:
                return base[attr]
            except KeyError:
                pass
            except TypeError:
                raise ExpressionError(f"cannot read {attr!r} here") from None
            if attr in _MAPPING_METHODS:
                return getattr(base, attr)
            raise ExpressionError(f"no key {attr!r} (use .get({attr!r}) when it may be missing)")
        if attr in _methods_for(base):
            return getattr(base, attr)
        raise ExpressionError(f"a {_kind(base)} has no attribute {attr!r}")

    def _call(self, node: ast.Call) -> Any:
        func_node = node.func
        if isinstance(func_node, ast.Attribute):
            attr = func_node.attr
            base = self._eval(func_node.value)
            if attr.startswith("_") or attr not in _methods_for(base):
                raise ExpressionError(f"method {attr!r} of a {_kind(base)} may not be called")
            func = getattr(base, attr)
        elif isinstance(func_node, ast.Name):
            try:
                func = self.functions[func_node.id]
            except KeyError:
                raise ExpressionError(f"unknown function {func_node.id!r} "
                                      f"(available: {', '.join(sorted(self.functions))})") from None
        else:
            raise ExpressionError("only named functions and methods may be called")
        args = []
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise ExpressionError("*args is not allowed")
            args.append(self._eval(a))
        kwargs = {}
        for k in node.keywords:
            if k.arg is None:
                raise ExpressionError("**kwargs is not allowed")
            kwargs[k.arg] = self._eval(k.value)
        return func(*args, **kwargs)

    def _subscript(self, node: ast.Subscript) -> Any:
        container = self._eval(node.value)
        key = self._eval(node.slice)
        if not isinstance(container, (Mapping, Sequence)):
            raise ExpressionError(f"a {_kind(container)} cannot be indexed")
        if isinstance(key, str) and key.startswith("_") and not isinstance(container, Mapping):
            raise ExpressionError("index not allowed")
        try:
            return container[key]
        except KeyError:
            raise ExpressionError(f"no key {key!r}") from None
        except IndexError:
            raise ExpressionError(f"index {key!r} out of range") from None


_local = threading.local()


def _evaluator() -> _Evaluator:
    ev = getattr(_local, "ev", None)
    if ev is None:
        ev = _local.ev = _Evaluator()
    return ev


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
