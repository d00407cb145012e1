"""packaging/sdd.toml, the commented /etc/sdd/sdd.toml: every setting is there, and uncommented it says
exactly the built-in defaults (so the file documents the daemon as it is)."""

from __future__ import annotations

import dataclasses
import re
import tomllib

from sdd.config import (
    ActionsConfig,
    ApiConfig,
    Config,
    EngineConfig,
    ExportConfig,
    IntakeConfig,
    MetricsConfig,
    PathsConfig,
    load_config,
    parse_config,
)

from .units import REPO

CONFFILE = REPO / "packaging" / "sdd.toml"
SETTING = re.compile(r"(?m)^# ([a-z_]+ = )")


def _uncommented() -> dict:
    return tomllib.loads(SETTING.sub(r"\1", CONFFILE.read_text(encoding="utf-8")))


def test_the_shipped_file_as_is_loads_as_the_defaults() -> None:
    assert load_config(CONFFILE) == dataclasses.replace(parse_config({}), source=CONFFILE)


def test_every_setting_uncommented_is_the_built_in_default() -> None:
    assert parse_config(_uncommented(), file=str(CONFFILE)) == parse_config({})


def test_every_key_the_daemon_accepts_is_documented() -> None:
    raw = _uncommented()
    expected = {
        "paths": {f.name for f in dataclasses.fields(PathsConfig)},
        "api": {f.name for f in dataclasses.fields(ApiConfig)},
        "dbus": {"bus"},
        "engine": {f.name for f in dataclasses.fields(EngineConfig)},
        "intake": {f.name for f in dataclasses.fields(IntakeConfig)} - {"nats"},  # a table: present = on
        # smtp and rate_limits are tables of their own; user_mode comes from --user, not the file.
        "actions": {f.name for f in dataclasses.fields(ActionsConfig)} - {"user_mode"},
        "logging": {"level", "target"},
        "export": {f.name for f in dataclasses.fields(ExportConfig)} - {"nats"},
        "metrics": {f.name for f in dataclasses.fields(MetricsConfig)},
    }
    assert set(raw) == set(expected) == {f.name for f in dataclasses.fields(Config)} - {"user_mode", "source"}
    for section, keys in expected.items():
        assert set(raw[section]) == keys, section
    assert set(raw["actions"]["smtp"]) == {"host", "port", "from", "timeout", "starttls", "username",
                                           "password_file"}
    assert set(raw["actions"]["rate_limits"]) == set(ActionsConfig().rate_limits)
