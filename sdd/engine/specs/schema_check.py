"""The structural layer of validation: the workflow JSON Schema (`workflow.schema.json`) applied with
jsonschema, each error explained in words a person understands and placed at its file:line:column; and the
published schema (`workflow_schema(actions)`): that structure plus each action's declared parameters, for
editors. Validation itself checks params in `semantic_check.py`, where the messages can say more.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

import jsonschema

from .issues import Path_, _Collector, _type_name, did_you_mean, format_path
from .params import catalogue, params_schema
from .vocabulary import TYPE_ACTIONS


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath("workflow.schema.json").read_text("utf-8"))


def workflow_schema(actions: object = None) -> dict[str, Any]:
    """The published workflow JSON Schema: the structure, plus the declared parameters of every action in
    `actions` (anything `params.catalogue` understands), so an editor knows each action's params."""
    out = copy.deepcopy(schema())
    known = catalogue(actions) or {}
    rules: list[dict[str, Any]] = []
    for name in sorted(known):
        declared = known[name]
        if declared is None:
            continue
        then = {"properties": {"params": params_schema(declared)}}
        rules.append({"if": {"required": ["action"], "properties": {"action": {"const": name}}}, "then": then})
        for step_type, implied in TYPE_ACTIONS.items():
            if implied == name:
                for key in ("type", "step_type"):
                    rules.append({"if": {"required": [key], "not": {"required": ["action"]},
                                         "properties": {key: {"const": step_type}}}, "then": then})
    if rules:
        out["$defs"]["step"]["allOf"] = rules
        names = sorted(known)
        out["$defs"]["step"]["properties"]["action"]["examples"] = names
    return out


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema())
    return cls(schema())


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_TYPE_WORDS = {"string": "a string", "integer": "a whole number", "number": "a number", "boolean": "true or false",
               "object": "a mapping", "array": "a list", "null": "null"}


def _schema_issues(data: Any, c: _Collector, step: bool = False) -> None:
    validator = _step_validator() if step else _validator()
    for err in validator.iter_errors(data):
        _explain(err, c, ())


@lru_cache(maxsize=1)
def _step_validator() -> jsonschema.protocols.Validator:
    step_schema = dict(schema()["$defs"]["step"])
    step_schema["$defs"] = schema()["$defs"]
    cls = jsonschema.validators.validator_for(schema())
    return cls(step_schema)


def _explain(err: jsonschema.ValidationError, c: _Collector, root: Path_) -> None:
    path = root + tuple(err.absolute_path)
    where = format_path(path) or "the workflow"
    kind = err.validator
    custom = err.schema.get("x-message") if isinstance(err.schema, Mapping) else None
    if kind == "additionalProperties":
        allowed = list((err.schema.get("properties") or {}).keys())
        for key in err.instance:
            if key not in allowed:
                c.add(path + (key,), f"unknown key {key!r} in {where}{did_you_mean(str(key), allowed)}", key=True)
    elif kind == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        c.add(path, f"{where} is missing the required key {missing!r}")
    elif kind == "type":
        expected = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        words = " or ".join(_TYPE_WORDS.get(str(t), str(t)) for t in expected)
        c.add(path, f"{where} must be {words}, not {_type_name(err.instance)} ({_short(err.instance)})")
    elif kind == "enum":
        options = [str(o) for o in err.validator_value]
        c.add(path, f"{where} must be one of {', '.join(options)}; got {_short(err.instance)}"
                    f"{did_you_mean(str(err.instance), options)}")
    elif kind in ("anyOf", "oneOf") and custom:
        # A list of steps or a step map that itself has errors: explain those instead of "none matched".
        best = [e for sub in (err.context or []) for e in [sub] if e.validator != "type" and e.absolute_path]
        if isinstance(err.instance, (list, dict)) and best:
            for sub in best:
                _explain(sub, c, root)
        else:
            c.add(path, f"{where} {custom}; got {_short(err.instance)}")
    elif kind == "not" and custom:
        c.add(path, custom)
    elif custom:
        c.add(path, f"{where}: {custom}; got {_short(err.instance)}")
    elif kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        word = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "more than",
                "exclusiveMaximum": "less than"}[kind]
        c.add(path, f"{where} must be {word} {err.validator_value}; got {_short(err.instance)}")
    elif kind == "minItems":
        c.add(path, f"{where} needs at least {err.validator_value} item(s)")
    else:
        c.add(path, f"{where}: {err.message}")


__all__ = ["schema", "workflow_schema"]
