"""What an action says about its parameters (`ParamSpec`), and the checks a workflow's step params get at
load time against that declaration: unknown names (with a did-you-mean), missing required ones, and literal
values of the wrong type or outside an enum. A templated value (`"{{ ... }}"`) is not known until it is
rendered, so it is checked then, by the action itself. An action without a declaration (`params=None`, e.g.
an older plugin) is not checked.

`params_schema` gives the same declaration as a JSON Schema fragment for the published workflow schema.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .issues import _type_name, did_you_mean

# Parameter types, as the JSON Schema names them; "mapping" is JSON's object, "list" its array.
PARAM_TYPES = ("string", "integer", "number", "boolean", "list", "mapping", "any")
_JSON_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean",
               "list": "array", "mapping": "object"}
_TYPE_WORDS = {"string": "a string", "integer": "a whole number", "number": "a number",
               "boolean": "true or false", "list": "a list", "mapping": "a mapping"}
# A string holding `{{` is rendered before the action sees it: its value is not known at load time.
_TEMPLATE_PATTERN = r"\{\{"


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of an action: its type(s), whether it is required, the values it may take (an enum;
    for a list, what each item may be) and a description for people and editors."""

    type: str | tuple[str, ...] = "any"
    required: bool = False
    enum: tuple[Any, ...] | None = None
    description: str = ""
    types: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        types = (self.type,) if isinstance(self.type, str) else tuple(self.type)
        unknown = [t for t in types if t not in PARAM_TYPES]
        if not types or unknown:
            raise ValueError(f"parameter type must be one or more of {', '.join(PARAM_TYPES)}, got {self.type!r}")
        object.__setattr__(self, "types", types)
        if self.enum is not None:
            object.__setattr__(self, "enum", tuple(self.enum))

    @classmethod
    def from_value(cls, value: ParamSpec | Mapping[str, Any]) -> ParamSpec:
        """A ParamSpec, or one from a plain dict such as `{"type": "string", "required": True}`."""
        if isinstance(value, ParamSpec):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"a parameter declaration is a mapping or a ParamSpec, not {type(value).__name__}")
        unknown = set(value) - {"type", "required", "enum", "description"}
        if unknown:
            raise ValueError(f"unknown key(s) in a parameter declaration: {', '.join(sorted(unknown))}")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.types[0] if len(self.types) == 1 else list(self.types)}
        if self.required:
            d["required"] = True
        if self.enum is not None:
            d["enum"] = list(self.enum)
        if self.description:
            d["description"] = self.description
        return d


def param_specs(table: Mapping[str, ParamSpec | Mapping[str, Any]] | None) -> dict[str, ParamSpec] | None:
    """A declaration (name → ParamSpec) from a table of ParamSpecs or plain dicts; None stays None."""
    if table is None:
        return None
    return {str(name): ParamSpec.from_value(value) for name, value in table.items()}


# What validation knows of the actions: name → declared parameters (None: undeclared, not checked).
Catalogue = Mapping[str, Mapping[str, ParamSpec] | None]


def catalogue(actions: Any) -> Catalogue | None:
    """What validation knows of `actions`: a WorkflowEngine, an ActionRegistry, ActionSpecs (an iterable, or a
    mapping by name), plain names (then only the names are known), or None (nothing is checked)."""
    if actions is None:
        return None
    actions = getattr(actions, "registry", actions)          # a WorkflowEngine
    declarations = getattr(actions, "declarations", None)    # an ActionRegistry
    if callable(declarations):
        return declarations()
    if isinstance(actions, Mapping):   # by name: ActionSpecs, or declarations already (a Catalogue)
        return {str(name): spec.params if hasattr(spec, "params")
                else param_specs(spec) if isinstance(spec, Mapping) else None for name, spec in actions.items()}
    return {str(getattr(a, "name", a)): getattr(a, "params", None) for a in actions}


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def _has_type(value: Any, kind: str) -> bool:
    if kind == "any":
        return True
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list)
    return isinstance(value, Mapping)


def literal_problem(spec: ParamSpec, value: Any) -> str | None:
    """Why a literal value does not fit the declaration, or None (also for values known only when rendered)."""
    if value is None or _templated(value):
        return None
    if not any(_has_type(value, kind) for kind in spec.types):
        words = " or ".join(_TYPE_WORDS.get(t, t) for t in spec.types)
        return f"must be {words}, not {_type_name(value)} ({value!r:.40})"
    if spec.enum is not None:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if _templated(item) or item in spec.enum:
                continue
            options = [str(o) for o in spec.enum]
            return (f"must be one of {', '.join(options)}; got {item!r:.40}"
                    f"{did_you_mean(str(item), options) if isinstance(item, str) else ''}")
    return None


def param_problems(action: str, declared: Mapping[str, ParamSpec], params: Mapping[str, Any]
                   ) -> Iterable[tuple[str | None, str]]:
    """(parameter name or None for the whole params, message) for each problem of `params` against the
    action's declaration."""
    for name, value in params.items():
        spec = declared.get(name)
        if spec is None:
            accepted = ", ".join(sorted(declared)) or "none"
            yield name, (f"{action} has no parameter {name!r}{did_you_mean(str(name), declared)} "
                         f"(it accepts: {accepted})")
            continue
        problem = literal_problem(spec, value)
        if problem:
            yield name, f"parameter {name!r} of {action} {problem}"
    missing = [n for n, spec in declared.items() if spec.required and params.get(n) is None]
    for name in missing:
        yield None, f"{action} needs the parameter {name!r}"


def params_schema(declared: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """The declaration as the JSON Schema of a step's `params` (templated strings always allowed)."""
    properties: dict[str, Any] = {}
    for name, spec in declared.items():
        alternatives: list[dict[str, Any]] = []
        for kind in spec.types:
            if kind == "any":
                alternatives = [{}]
                break
            alt: dict[str, Any] = {"type": _JSON_TYPES[kind]}
            if spec.enum is not None and kind == "string":
                alt["enum"] = list(spec.enum)
            elif spec.enum is not None and kind == "list":
                alt["items"] = {"anyOf": [{"enum": list(spec.enum)},
                                          {"type": "string", "pattern": _TEMPLATE_PATTERN}]}
            alternatives.append(alt)
        prop: dict[str, Any] = ({} if alternatives == [{}] else
                                {"anyOf": [*alternatives, {"type": "string", "pattern": _TEMPLATE_PATTERN}]})
        if spec.description:
            prop["description"] = spec.description
        properties[name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    required = [n for n, spec in declared.items() if spec.required]
    if required:
        schema["required"] = required
    return schema


__all__ = ["PARAM_TYPES", "Catalogue", "ParamSpec", "catalogue", "literal_problem", "param_problems", "param_specs", "params_schema"]
