"""The built-in actions' parameter declarations (sdd/actions/declarations.py) are the one source: the specs
the engine validates against, the names the actions accept at run time, the enums they check, and the
published workflow JSON Schema all come from the same table."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from sdd.actions import notify, report, scanner
from sdd.actions.builtin import BUILTINS
from sdd.actions.declarations import DECLARATIONS, published_schema
from sdd.engine import InvalidParams, ParamSpec

from .conftest import Env

ROOT = Path(__file__).resolve().parents[2]


def test_every_builtin_action_is_declared_and_carries_its_declaration(env: Env) -> None:
    assert {name for name, *_ in BUILTINS} == set(DECLARATIONS)
    for name, spec in env.actions.items():
        assert spec.params is not None
        assert {k: v.to_dict() for k, v in spec.params.items()} == {
            k: ParamSpec.from_value(v).to_dict() for k, v in DECLARATIONS[name].items()}


@pytest.mark.parametrize("action", sorted(DECLARATIONS))
async def test_the_action_accepts_exactly_the_declared_names(env: Env, action: str) -> None:
    with pytest.raises(InvalidParams) as err:
        await env.call(action, zz_not_a_parameter=1)
    assert str(err.value) == (f"{action}: unknown parameter(s) zz_not_a_parameter; accepted: "
                              f"{', '.join(sorted(DECLARATIONS[action]))}")


@pytest.mark.parametrize("action", sorted(a for a, d in DECLARATIONS.items()
                                          if any(p.get("required") for p in d.values())))
async def test_a_required_parameter_is_required_at_run_time_too(env: Env, action: str) -> None:
    first = next(n for n, p in DECLARATIONS[action].items() if p.get("required"))
    with pytest.raises(InvalidParams, match=f"{action}: parameter '{first}': is required"):
        await env.call(action)


def test_the_declared_enums_are_what_the_actions_check() -> None:
    assert tuple(DECLARATIONS["send_notification"]["urgency"]["enum"]) == notify.URGENCIES
    assert tuple(DECLARATIONS["send_notification"]["channel"]["enum"]) == notify.CHANNELS
    assert tuple(DECLARATIONS["run_scan"]["scan_type"]["enum"]) == scanner.SCAN_TYPES
    assert tuple(DECLARATIONS["generate_report"]["format"]["enum"]) == report.FORMATS


def test_the_shipped_schema_is_the_published_one() -> None:
    shipped = json.loads((ROOT / "sdd" / "actions" / "workflow.schema.json").read_text(encoding="utf-8"))
    assert shipped == published_schema(), "regenerate: python -m sdd.actions.schema > sdd/actions/workflow.schema.json"


@pytest.mark.parametrize("path", sorted((ROOT / "templates").glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_templates_satisfy_the_published_schema(path: Path) -> None:
    schema = published_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text(encoding="utf-8")))] == []
    bad = yaml.safe_load(path.read_text(encoding="utf-8"))
    leaf = next(s for s in bad["steps"] if "action" in s or s.get("type") in ("notification", "script", "webhook"))
    leaf.setdefault("params", {})["zz_typo"] = 1
    assert any("zz_typo" in e.message for e in validator.iter_errors(bad))
