"""Config: every error names the file and the key; defaults resolve per mode; nothing half-valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdd.config import ConfigError, config_path, load_config, parse_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sdd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_default_file_means_builtin_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nothing"))
    monkeypatch.delenv("SDD_CONFIG", raising=False)
    config = load_config(user=True)
    assert config.source is None
    assert config.engine.max_concurrent_runs == 16
    assert config.dbus.bus == "session"


def test_explicitly_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert "absent.toml: no such file" in str(info.value)


def test_system_defaults_follow_the_contract() -> None:
    config = parse_config({})
    assert str(config.paths.spool) == "/var/spool/sdd"
    assert str(config.paths.socket) == "/run/sdd/sdd.sock"
    assert [str(p) for p in config.paths.workflows] == ["/usr/share/sdd/templates", "/etc/sdd/workflows"]
    assert config.api.socket_group == "sdd" and config.api.socket_mode == "0660"
    assert config.database == Path("/var/lib/sdd/sdd.db")


def test_every_error_is_reported_at_once_with_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, """
[paths]
spol = "/x"
state = "relative/dir"
[engine]
max_concurrent_runs = "many"
[api]
socket_mode = "0999"
[bogus]
""")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    errors = info.value.errors
    assert f"{path}: paths.spol: unknown key (did you mean 'spool'?)" in errors
    assert any("paths.state: must be an absolute path" in e for e in errors)
    assert any("engine.max_concurrent_runs: expected int, got str" in e for e in errors)
    assert any("api.socket_mode" in e for e in errors)
    assert any(e.startswith(f"{path}: bogus: unknown key") for e in errors)
    assert len(errors) == 5


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[paths\nspool=")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "invalid TOML" in str(info.value)


def test_booleans_are_not_numbers() -> None:
    with pytest.raises(ConfigError, match="engine.max_concurrent_runs: expected int, got bool"):
        parse_config({"engine": {"max_concurrent_runs": True}})


def test_scanner_accepts_a_name_or_argv_but_never_a_shell_line() -> None:
    config = parse_config({"actions": {"scanner": ["clamdscan", "--fdpass"], "updater": "freshclam"}})
    assert config.actions.scanner == ("clamdscan", "--fdpass")
    assert config.actions.updater == ("freshclam",)
    with pytest.raises(ConfigError, match="actions.scanner"):
        parse_config({"actions": {"scanner": []}})


def test_smtp_and_rate_limits_are_checked() -> None:
    config = parse_config({"actions": {"smtp": {"host": "127.0.0.1", "port": 2525, "from": "a@b"},
                                       "rate_limits": {"kill_process": [5, 60]}}})
    assert config.actions.smtp.port == 2525 and config.actions.smtp.sender == "a@b"
    assert config.actions.rate_limits["kill_process"].count == 5
    with pytest.raises(ConfigError) as info:
        parse_config({"actions": {"smtp": {"hots": "x"}, "rate_limits": {"kill_process": "lots"}}})
    assert any("actions.smtp.hots: unknown key (did you mean 'host'?)" in e for e in info.value.errors)
    assert any("actions.rate_limits.kill_process: expected [count, per_seconds]" in e for e in info.value.errors)


def test_config_path_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDD_CONFIG", "/from/env.toml")
    assert config_path("/explicit.toml", user=False) == Path("/explicit.toml")
    assert config_path(None, user=False) == Path("/from/env.toml")
    monkeypatch.delenv("SDD_CONFIG")
    assert config_path(None, user=False) == Path("/etc/sdd/sdd.toml")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert config_path(None, user=True) == tmp_path / "sdd" / "sdd.toml"


def test_connection_caps_are_positive_integers() -> None:
    assert parse_config({}).api.max_connections_per_uid == 32
    assert parse_config({"api": {"max_connections_per_uid": 4}}).api.max_connections_per_uid == 4
    with pytest.raises(ConfigError, match="api.max_connections_per_uid"):
        parse_config({"api": {"max_connections_per_uid": 0}})
    with pytest.raises(ConfigError, match="api.max_connections_per_uid: expected int, got str"):
        parse_config({"api": {"max_connections_per_uid": "lots"}})
