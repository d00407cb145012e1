"""The fleet's config sections: defaults, every value checked, unknown keys and wrong types named with the file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sdd.config import ConfigError, listen_address, parse_config
from sdd.fleet.nats_link import expand, host_token
from tests.support.daemon import sdd_command


def test_fleet_defaults_are_off() -> None:
    c = parse_config({})
    assert c.export.ocsf_file == "" and c.export.nats is None and c.intake.nats is None
    assert c.metrics.listen == "" and c.metrics.textfile == "" and c.logging.target == "auto"


def test_fleet_sections_parse() -> None:
    c = parse_config({"logging": {"target": "journal"},
                      "export": {"ocsf_file": "/var/log/sdd/events.ocsf.jsonl", "ocsf_file_max_bytes": 1000,
                                 "nats": {"url": "tls://nats.example:4222", "stream": "SDD", "subject": "a.{host}"}},
                      "intake": {"nats": {"durable": "sdd-{host}", "credentials": "/etc/sdd/nats.creds"}},
                      "metrics": {"listen": "[::1]:9788", "textfile": "/var/lib/node/sdd.prom"}})
    assert c.export.nats is not None and c.export.nats.url == "tls://nats.example:4222"
    assert c.intake.nats is not None and c.intake.nats.subject == "sdd.detections.{host}"
    assert c.intake.nats.credentials == "/etc/sdd/nats.creds" and c.export.ocsf_file_max_bytes == 1000
    assert listen_address(c.metrics.listen) == ("::1", 9788)


@pytest.mark.parametrize(("raw", "needle"), [
    ({"logging": {"target": "syslog"}}, "logging.target: expected one of auto, journal, stderr"),
    ({"export": {"ocsf_fil": "/x"}}, "export.ocsf_fil: unknown key (did you mean 'ocsf_file'?)"),
    ({"export": {"ocsf_file": "relative.jsonl"}}, "export.ocsf_file: must be an absolute path"),
    ({"export": {"ocsf_file_max_bytes": "big"}}, "export.ocsf_file_max_bytes: expected int"),
    ({"export": {"outbox_max_events": 0}}, "export.outbox_max_events: must be at least 1"),
    ({"export": {"nats": {"url": "http://x"}}}, "export.nats.url: expected a URL"),
    ({"export": {"nats": {"stream": "a.b"}}}, "export.nats.stream: expected a name"),
    ({"export": {"nats": {"subject": "sdd.>"}}}, "export.nats.subject: expected a subject without wildcards"),
    ({"export": {"nats": {"bogus": 1}}}, "export.nats.bogus: unknown key"),
    ({"export": {"nats": "nats://x"}}, "export.nats: expected a table"),
    ({"intake": {"nats": {"durable": "has space"}}}, "intake.nats.durable: expected a name"),
    ({"intake": {"nats": {"credentials": "rel.creds"}}}, "intake.nats.credentials: must be an absolute path"),
    ({"metrics": {"listen": 9788}}, "metrics.listen: expected str"),
    ({"metrics": {"listen": "localhost"}}, "metrics.listen: expected \"HOST:PORT\""),
    ({"metrics": {"textfile": "/x/sdd.txt"}}, "metrics.textfile: must be an absolute path ending in .prom"),
    ({"metrics": {"port": 1}}, "metrics.port: unknown key"),
])
def test_bad_fleet_values_are_errors_naming_the_key_and_file(raw: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw, file="/etc/sdd/sdd.toml")
    assert any(e.startswith("/etc/sdd/sdd.toml: ") and needle in e for e in err.value.errors), err.value.errors


def test_check_config_refuses_a_bad_fleet_section(tmp_path: Path) -> None:
    cfg = tmp_path / "sdd.toml"
    cfg.write_text('[export.nats]\nurl = "nats://127.0.0.1:4222"\nstreem = "SDD"\n')
    out = subprocess.run([*sdd_command(), "check-config", "--config", str(cfg)], capture_output=True, text=True,
                         check=False, timeout=60)
    assert out.returncode == 1 and f"{cfg}: export.nats.streem: unknown key (did you mean 'stream'?)" in out.stderr


def test_the_host_token_keeps_one_subject_token_and_a_valid_name() -> None:
    assert host_token("web-01.example.com") == "web-01_example_com"
    assert host_token("a b*>\n") == "a_b___" and host_token("") == "_"
    assert expand("sdd.events.{host}", "h.x") == "sdd.events.h_x"
