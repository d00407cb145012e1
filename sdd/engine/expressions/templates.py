"""Templates: strings with `{{ expr }}` parts, split into parts once, and values (dicts/lists/strings) whose
templates are compiled once and rendered many times. A string that is exactly one `{{ expr }}` keeps the
value's type. Rendered values (detection data included) are data: they are never rendered again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ExpressionError
from .language import Expression, compile_expression, evaluate

MAX_TEMPLATE_RESULT = 1_000_000   # characters of a rendered template string


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
    "MAX_TEMPLATE_RESULT",
    "Renderer",
    "Template",
    "compile_template",
    "compile_value",
    "render",
    "template_expressions",
]
