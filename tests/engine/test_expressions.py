"""The expression language: what works, what is refused, and that refusal is always an ExpressionError."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdd.engine import ExpressionError
from sdd.engine.expressions import check_syntax, compile_template, evaluate, evaluate_condition, render
from sdd.engine.expressions.sandbox import MAX_SIZE

NAMES = {
    "context": {"threats_found": 2, "files": ["/a", "/b"], "get": "data wins", "nested": {"x": {"y": 1}}},
    "detection": {"severity": "high", "file_path": "/home/a/x.exe", "items": [1, 2], "process_id": 42},
    "steps": {"scan": {"status": "completed", "result": {"infected": 3}}},
}


def test_original_context_get_condition_works() -> None:
    assert evaluate_condition('context.get("threats_found", 0) > 0', NAMES) is True
    assert evaluate_condition('context.get("missing", 0) > 0', NAMES) is False


def test_dict_attribute_access_reads_keys() -> None:
    assert evaluate("detection.severity", NAMES) == "high"
    assert evaluate("context.nested.x.y", NAMES) == 1
    assert evaluate("steps.scan.result.infected", NAMES) == 3


def test_data_keys_win_over_method_names_but_methods_can_still_be_called() -> None:
    assert evaluate("detection.items", NAMES) == [1, 2]
    assert evaluate("context.get", NAMES) == "data wins"
    assert evaluate('detection.get("severity")', NAMES) == "high"


def test_common_condition_forms() -> None:
    assert evaluate_condition('detection.severity in ["critical", "high"]', NAMES)
    assert evaluate_condition('detection.file_path.endswith(".exe") and detection.process_id > 0', NAMES)
    assert evaluate_condition('len(context.files) == 2', NAMES)
    assert evaluate_condition('basename(detection.file_path) == "x.exe"', NAMES)
    assert evaluate("1 if detection.severity == 'high' else 2", NAMES) == 1


def test_condition_must_be_boolean() -> None:
    with pytest.raises(ExpressionError, match="not true/false"):
        evaluate_condition('"false"', NAMES)
    with pytest.raises(ExpressionError, match="not true/false"):
        evaluate_condition("context.threats_found", NAMES)


def test_only_the_three_names_are_visible() -> None:
    with pytest.raises(ExpressionError, match="unknown name"):
        evaluate("os", NAMES)


def test_missing_key_is_a_clear_error() -> None:
    with pytest.raises(ExpressionError, match="no key 'severty'"):
        evaluate("detection.severty", NAMES)


def test_mutating_methods_are_refused() -> None:
    for expr in ("context.clear()", "context.update({})", "context.pop('get')", "context.files.append(1)",
                 "detection.file_path.ljust(100000000)", "','.join(context.files)", "'x'.format()"):
        with pytest.raises(ExpressionError):
            evaluate(expr, NAMES)
    assert NAMES["context"]["get"] == "data wins"


def test_template_whole_expression_keeps_type() -> None:
    assert render("{{ detection.items }}", NAMES) == [1, 2]
    assert render("  {{ detection.process_id }} ", NAMES) == 42
    assert render("pid={{ detection.process_id }}", NAMES) == "pid=42"
    assert render({"a": ["{{ context.threats_found }}", "x"], "b": 1}, NAMES) == {"a": [2, "x"], "b": 1}


def test_render_returns_plain_values_unchanged_without_copy() -> None:
    params = {"a": [1, 2], "b": "plain"}
    assert render(params, NAMES) is params


def test_detection_values_are_never_rendered_again() -> None:
    names = {"context": {}, "steps": {}, "detection": {"file_path": "{{ context.secret }}"}}
    assert render("{{ detection.file_path }}", names) == "{{ context.secret }}"
    assert render("path: {{ detection.file_path }}", names) == "path: {{ context.secret }}"


def test_unclosed_template_is_an_error() -> None:
    with pytest.raises(ExpressionError, match="never closed"):
        compile_template("{{ detection.x")


def test_check_syntax() -> None:
    assert check_syntax("a == 1") is None
    assert "invalid" in (check_syntax("a ==") or "")


HOSTILE = [
    "__import__('os')",
    "().__class__.__bases__[0].__subclasses__()",
    "9**9**9**9",
    "'a'*10**10",
    "(" * 10_000 + "1" + ")" * 10_000,
    "'" + "a" * 10_000_000 + "'",
    "[" * 5000 + "]" * 5000,
    "-" * 1999 + "1",
    "not " * 450 + "True",
    "'%0999999999d' % 1",
    "f'{1:>999999999}'",
    "[x for x in 'a' for y in 'b']",
    "detection.__class__",
    "detection.file_path.__class__.__mro__",
    "getattr(detection, '__class__')",
    "context.get.__self__",
    "lambda: 1",
    "(x := 1)",
    "import os",
    "open('/etc/passwd').read()",
    "exec('1')",
    "eval('1')",
    "str(['a'*99999]*100000)",
    "1 << 10000 << 10000",
    "int('9' * 5000)",
    "sum([[1]], [])",
    "10.0 ** 1000000",
    "(2**4096) ** 2",
    "'{0.__class__}'.format(1)",
    "'\\x00'",
    "\x00",
    "",
    "a; b",
    "yield 1",
    "await x",
]


@pytest.mark.timeout(20)   # "bounded time": a hang fails the test instead of stalling the suite
@pytest.mark.parametrize("expr", HOSTILE, ids=[repr(h[:30]) for h in HOSTILE])
def test_hostile_expressions_fail_with_expression_error_in_bounded_memory(expr: str) -> None:
    tracemalloc.start()
    try:
        result = None
        try:
            result = evaluate(expr, NAMES)
        except ExpressionError:
            pass
        else:
            # The few harmless ones may evaluate; they must stay small.
            assert len(repr(result)) < 1000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 1024 * 1024


@pytest.mark.parametrize("expr", HOSTILE[:25], ids=[repr(h[:30]) for h in HOSTILE[:25]])
def test_hostile_expressions_are_refused(expr: str) -> None:
    with pytest.raises(ExpressionError):
        evaluate(expr, NAMES)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80))
def test_evaluate_raises_only_expression_errors_on_any_text(text: str) -> None:
    try:
        evaluate(text, NAMES)
    except ExpressionError:
        pass


_ATOMS = st.sampled_from(["1", "0", "-1", "2.5", "'a'", "''", "None", "True", "[]", "{}", "[1, 'x']",
                          "context", "detection", "steps", "context.files", "detection.severity",
                          "detection.items", "context.nested", "10**3", "'ab'*3"])
_OPS = st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "==", "!=", "<", ">", " in ", " not in ",
                        " and ", " or ", "<<", ">>", "&", "|", "^"])


@st.composite
def _expressions(draw: st.DrawFn, depth: int = 0) -> str:
    if depth > 3 or draw(st.booleans()):
        atom = draw(_ATOMS)
        suffix = draw(st.sampled_from(["", "[0]", ".get('x')", ".lower()", "[::-1]", ".keys()", "[1:]"]))
        return atom + suffix
    left = draw(_expressions(depth + 1))
    right = draw(_expressions(depth + 1))
    form = draw(st.sampled_from(["{l}{op}{r}", "({l}){op}({r})", "not {l}", "len({l})", "str({l})",
                                 "{l} if {r} else {l}", "[{l}, {r}]", "{{'k': {l}}}", "-{l}", "int({l})",
                                 "sorted({l})", "max({l}, {r})"]))
    return form.format(l=left, r=right, op=draw(_OPS))


@settings(max_examples=600, deadline=None)
@given(_expressions())
def test_evaluate_raises_only_expression_errors_on_structured_expressions(text: str) -> None:
    try:
        evaluate(text, NAMES)
    except ExpressionError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_render_raises_only_expression_errors(text: str) -> None:
    try:
        render({"a": "{{ " + text + " }}", "b": "x {{" + text + "}} y"}, NAMES)
    except ExpressionError:
        pass


def test_methods_of_look_alike_objects_are_not_called() -> None:
    class Sneaky(dict):  # type: ignore[type-arg]
        def get(self, *args: object) -> str:
            raise AssertionError("must not be called")

    def gen():  # a generator's frame would lead to globals
        yield 1

    names = {"context": {"s": Sneaky(a=1), "g": gen()}, "detection": {}, "steps": {}}
    assert evaluate("context.s.a", names) == 1      # data is still readable
    with pytest.raises(ExpressionError):
        evaluate("context.s.get('a')", names)
    with pytest.raises(ExpressionError):
        evaluate("context.g.gi_frame", names)


@pytest.mark.parametrize("fn", ["list", "tuple", "set", "sorted", "dict"])
def test_builtin_constructors_respect_the_size_bound(fn: str) -> None:
    big = {"items": list(range(MAX_SIZE + 1)), "map": {str(i): i for i in range(MAX_SIZE + 1)}}
    arg = "context.map" if fn == "dict" else "context.items"
    with pytest.raises(ExpressionError, match="longer than"):
        evaluate(f"{fn}({arg})", {"context": big})
    small = {"items": [3, 1, 2], "map": {"a": 1}}
    assert len(evaluate(f"{fn}({arg})", {"context": small})) == (1 if fn == "dict" else 3)
