"""`sdd-ingest --format wazuh` as Wazuh's execd runs it: the test plays execd's part (src/os_execd: write the
message, read the script's `check_keys` line, answer `continue` or `abort` with the message itself), for
the 4.x messages and the 5.x ones from Wazuh's "Custom active response scripts" pages."""

from __future__ import annotations

import copy
import json
import os
import select
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sdd_client.ingest.wazuh import Message, severity

from tests.ingest.conftest import SDD_INGEST, spool_detections

SHELLSHOCK = {  # the 4.x documentation's example, as execd passes it to firewall-drop
    "version": 1,
    "origin": {"name": "worker01", "module": "wazuh-execd"},
    "command": "add",
    "parameters": {
        "extra_args": [],
        "alert": {
            "timestamp": "2021-02-01T20:58:44.830+0000",
            "rule": {"level": 15, "description": "Shellshock attack detected", "id": "31168",
                     "mitre": {"id": ["T1068", "T1190"], "tactic": ["Privilege Escalation", "Initial Access"]},
                     "firedtimes": 2, "mail": True, "groups": ["web", "accesslog", "attack"]},
            "agent": {"id": "000", "name": "ubuntu-bionic"},
            "manager": {"name": "ubuntu-bionic"},
            "id": "1612213124.6448363",
            "full_log": '192.168.0.223 - - [01/Feb/2021:20:58:43 +0000] "GET / HTTP/1.1" 200 612 "-" '
                        '"() { :; }; /bin/cat /etc/passwd"',
            "decoder": {"name": "web-accesslog"},
            "data": {"protocol": "GET", "srcip": "192.168.0.223", "id": "200", "url": "/"},
            "location": "/var/log/nginx/access.log",
        },
        "program": "/var/ossec/active-response/bin/sdd",
    },
}

SHA = "ab" * 32
FIM_ALERT = {  # a file integrity monitoring alert (rule 554: file added)
    "timestamp": "2026-11-25T10:20:05.123+0000",
    "rule": {"level": 5, "description": "File added to the system.", "id": "554",
             "groups": ["ossec", "syscheck", "syscheck_entry_added", "syscheck_file"]},
    "agent": {"id": "001", "name": "web-1"},
    "manager": {"name": "wazuh-manager"},
    "id": "1795602005.77310",
    "full_log": "File '/home/alice/Downloads/dropper.sh' added\nMode: realtime\n",
    "syscheck": {"path": "/home/alice/Downloads/dropper.sh", "mode": "realtime", "size_after": "120",
                 "sha256_after": SHA, "event": "added"},
    "decoder": {"name": "syscheck_new_entry"},
    "location": "syscheck",
}

V5 = {  # the 5.x documentation's message, with the finding's file
    "wazuh": {"active_response": {"name": "sdd", "executable": "sdd", "location": "local", "agent_id": "001",
                                  "type": "stateful", "stateful_timeout": 60},
              "agent": {"id": "001", "name": "test-agent"},
              "rule": {"id": "554", "level": 12, "description": "File added to the system."}},
    "file": {"path": "/srv/upload/x.php", "hash": {"sha256": SHA}},
    "source": {"ip": "192.168.1.100"},
    "user": {"name": "username"},
    "command": "enable",
}


def fim(command: str = "add") -> dict[str, Any]:
    message = copy.deepcopy(SHELLSHOCK)
    message["command"] = command
    message["parameters"]["alert"] = copy.deepcopy(FIM_ALERT)
    return message


class Execd:
    """The part of wazuh-execd that talks to an active-response script (ExecdRun / ExecdTimeoutRun)."""

    def __init__(self, spool: Path, bind_stdout: bool = True) -> None:
        self.proc = subprocess.Popen([SDD_INGEST, "--format", "wazuh", "--spool", str(spool)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.bind_stdout = bind_stdout

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        self.proc.stdin.flush()

    def read_keys(self, timeout: float = 30.0) -> dict[str, Any]:
        """fgets(response, OS_SIZE_8192, wfd->file_out): one line from the script."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "the script sent no check_keys line"
        line = self.proc.stdout.readline()
        assert line.endswith(b"\n") and len(line) < 8192
        return json.loads(line)

    def answer(self, message: dict[str, Any], command: str) -> None:
        reply = dict(message, command=command)  # execd replaces "command" in the message it sent
        self.send(reply)

    def close_input(self) -> None:
        """wpclose(): execd is done talking."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.stdin = None

    def finish(self, timeout: float = 60.0) -> tuple[int, bytes, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err.decode()


def test_4x_add_answers_check_keys_and_writes_on_continue(spool: Path) -> None:
    execd = Execd(spool)
    message = fim()
    execd.send(message)
    keys = execd.read_keys()
    assert keys["version"] == 1 and keys["command"] == "check_keys"
    assert keys["origin"] == {"name": "sdd-ingest", "module": "active-response"}
    assert keys["parameters"]["keys"] == ["wazuh:001:1795602005.77310"]
    execd.answer(message, "continue")
    rc, out, err = execd.finish()
    assert rc == 0, err
    assert out == b""  # after the check_keys line, nothing on stdout
    [d] = spool_detections(spool)
    assert {k: v for k, v in d.items() if k != "wazuh"} == {
        "type": "wazuh", "source": "wazuh", "id": "wazuh:001:1795602005.77310", "severity": "low",
        "threat_name": "File added to the system.", "file_path": "/home/alice/Downloads/dropper.sh",
        "sha256": SHA, "host": "web-1", "detected_at": "2026-11-25T10:20:05.123+00:00"}
    assert d["wazuh"] == message


def test_4x_abort_writes_nothing_and_is_no_error(spool: Path) -> None:
    execd = Execd(spool)
    execd.send(fim())
    execd.read_keys()
    execd.answer(fim(), "abort")
    rc, _, err = execd.finish()
    assert rc == 0 and "abort" in err and spool_detections(spool) == []


def test_4x_delete_is_an_undo_request_without_handshake(spool: Path) -> None:
    # ExecdTimeoutRun binds only the script's stdin and sends the stored message with command "delete".
    execd = Execd(spool)
    execd.send(fim("delete"))
    execd.close_input()
    rc, out, err = execd.finish()
    assert rc == 0 and out == b"", err
    [undo] = spool_detections(spool)
    assert undo["type"] == "undo" and undo["undo_of"] == "wazuh:001:1795602005.77310"
    assert undo["id"] == "wazuh:001:1795602005.77310:undo" and undo["file_path"] == "/home/alice/Downloads/dropper.sh"


def test_4x_documentation_example_maps_level_and_data(spool: Path) -> None:
    execd = Execd(spool)
    execd.send(SHELLSHOCK)
    execd.read_keys()
    execd.answer(SHELLSHOCK, "continue")
    assert execd.finish()[0] == 0
    [d] = spool_detections(spool)
    assert d["severity"] == "critical" and d["threat_name"] == "Shellshock attack detected"
    assert "file_path" not in d and d["host"] == "ubuntu-bionic"


def test_execd_closing_before_its_answer_still_writes(spool: Path) -> None:
    execd = Execd(spool)
    execd.send(fim())
    execd.read_keys()
    execd.close_input()
    rc, _, err = execd.finish()
    assert rc == 0 and "did not answer" in err and len(spool_detections(spool)) == 1


@pytest.mark.parametrize("command, kind", [("enable", "wazuh"), ("disable", "undo")])
def test_5x_messages_need_no_handshake(spool: Path, command: str, kind: str) -> None:
    execd = Execd(spool)
    execd.send(dict(V5, command=command))
    execd.close_input()
    rc, out, err = execd.finish()
    assert rc == 0 and out == b"", err
    [d] = spool_detections(spool)
    assert d["type"] == kind and d["file_path"] == "/srv/upload/x.php" and d["host"] == "test-agent"
    assert d["severity"] == "high" and d["sha256"] == SHA
    if kind == "undo":
        assert d["undo_of"] == Message(V5).add_id()


@pytest.mark.parametrize("raw, reason", [
    (b"", "no message"),
    (b"not json\n", "invalid JSON"),
    (b'{"version": 1, "command": "add"}\n', "not a Wazuh active-response message"),
    (b'{"version": 1, "command": "restart", "parameters": {"alert": {}}}\n', "neither add nor delete"),
    (b'{"wazuh": {}, "command": "launch"}\n', "neither enable nor disable"),
    (b'{"version": 1, "command": "add", "parameters": {"alert": []}}\n', "without parameters.alert"),
    (b'\xff\xfe\n', "not valid UTF-8"),
])
def test_bad_messages_are_refused_loudly(spool: Path, raw: bytes, reason: str) -> None:
    r = subprocess.run([SDD_INGEST, "--format", "wazuh", "--spool", str(spool)], input=raw, capture_output=True,
                       timeout=60, check=False)
    assert r.returncode == 1 and reason in r.stderr.decode(), r.stderr
    assert r.stdout == b"" and os.listdir(spool / "new") == []


def test_severity_follows_wazuh_rule_levels() -> None:
    assert [severity(n) for n in (0, 6, 7, 11, 12, 14, 15, 16)] == [
        "low", "low", "medium", "medium", "high", "high", "critical", "critical"]
    assert severity("12") == "high" and severity(None) is None and severity(True) is None


def test_data_paths_when_there_is_no_syscheck() -> None:
    message = copy.deepcopy(SHELLSHOCK)
    message["parameters"]["alert"]["data"] = {"virustotal": {"source": {"file": "/tmp/dropped.exe"}}}
    assert Message(message).detection()["file_path"] == "/tmp/dropped.exe"
    message["parameters"]["alert"]["data"] = {"file": "relative.exe", "path": "/opt/x"}
    assert Message(message).detection()["file_path"] == "/opt/x"
