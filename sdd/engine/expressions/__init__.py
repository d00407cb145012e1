"""The sandboxed expression language of workflows: `language.py` (parse, bound, cache, evaluate),
`templates.py` (`{{ }}` inside strings and values), `sandbox.py` (the restricted evaluator)."""

from .language import NAMES, Expression, check_syntax, compile_expression, evaluate, evaluate_condition
from .templates import Renderer, Template, compile_template, compile_value, render, template_expressions

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
    "template_expressions",
]
