"""The restricted evaluator behind `language.py`: simpleeval with our node set, operators that refuse
to build huge values, a short list of pure functions, and read-only methods on exact builtin types only.
Nothing here knows about workflows; `language.py` parses, caches and bounds the text first.
"""

from __future__ import annotations

import ast
import math
import operator as op
import posixpath
import threading
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from simpleeval import EvalWithCompoundTypes, safe_lshift, safe_rshift

from ..errors import ExpressionError

MAX_SIZE = 100_000                # characters/items of any string or sequence an expression builds
MAX_POWER_BITS = 4096             # an integer power may not exceed this many bits
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
    "tuple": _bounded(tuple), "set": _bounded(set), "dict": _bounded(dict), "basename": posixpath.basename,
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
        # simpleeval's compound-types evaluator adds the raw list/tuple/set/dict builtins on top of ours,
        # which would bypass the size bound: put our table back.
        self.functions = dict(FUNCTIONS)
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
