"""`--format wazuh`: a Wazuh active-response executable. execd starts it once per alert and speaks JSON lines
on its standard input and output (docs/sources.md quotes Wazuh's documentation).

Wazuh 4.x: the first line is `{"version": 1, "origin": {...}, "command": "add"|"delete", "parameters":
{"extra_args": [], "alert": {...}, "program": ...}}`. For `add`, a stateful script answers with the keys that
identify its action — `{"version": 1, "origin": {"name": ..., "module": "active-response"}, "command":
"check_keys", "parameters": {"keys": [...]}}` — and execd replies `continue` (go on) or `abort` (this key
already ran and is still within its timeout). We send the detection's id as the key, so only a replay of
the very same alert is aborted; sdd de-duplicates on that id anyway. `delete` (the timeout expired) comes
without a handshake. Wazuh 5.x: one message `{"wazuh": {"active_response": {...}, "agent": {...}},
"command": "enable"|"disable", ...}` with the finding's fields (Wazuh Common Schema, ECS names such as
`file.path`) at the top level, and no handshake.

`add`/`enable` becomes a detection: `type` `wazuh`, `severity` from the rule level (15 and up critical,
12-14 high, 7-11 medium, else low), `threat_name` the rule description, `file_path` from `syscheck.path`
(file integrity monitoring), else `file.path` (5.x), else the first absolute path among `data.file_path`,
`data.file`, `data.path`, `data.filename`, `data.virustotal.source.file`; `sha256` from the file's new hash,
`host` the agent name. `delete`/`disable` becomes an undo request: `type` `undo` with `undo_of` naming the
detection the alert made, which a workflow triggered on `undo` can act on (no such workflow: it is recorded
and nothing runs). The whole message stays under `wazuh`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select

from .outcome import BadLine, Detection, Ignored, Rejected, absolute_path, clean_text, parse_json_line

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .lines import LineReader
    from .outcome import Outcome

HANDSHAKE_TIMEOUT = 30.0  # seconds to wait for execd's continue/abort after check_keys
DATA_PATHS = ("file_path", "file", "path", "filename", "virustotal.source.file")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_OFFSET = re.compile(r"(.*[+-]\d{2})(\d{2})")  # Wazuh 4.x writes +0000; ISO 8601 wants +00:00


def severity(level: Any) -> str | None:
    if isinstance(level, str) and level.isdigit():
        level = int(level)
    if not isinstance(level, int) or isinstance(level, bool):
        return None
    return "critical" if level >= 15 else "high" if level >= 12 else "medium" if level >= 7 else "low"


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _timestamp(value: Any) -> str | None:
    text = clean_text(value, 64)
    if text is None:
        return None
    m = _OFFSET.fullmatch(text)
    return f"{m.group(1)}:{m.group(2)}" if m else text


class Message:
    """One execd message, understood: its version, whether it adds or undoes, and the detection it makes."""

    def __init__(self, value: Any) -> None:
        if not isinstance(value, dict):
            raise BadLine("not a Wazuh active-response message: expected a JSON object")
        self.raw = value
        command = value.get("command")
        if isinstance(value.get("parameters"), dict) and "wazuh" not in value:
            self.version = 4
            alert = value["parameters"].get("alert")
            if not isinstance(alert, dict):
                raise BadLine("Wazuh 4.x message without parameters.alert")
            self.alert: dict[str, Any] = alert
            if command not in ("add", "delete"):
                raise BadLine(f"Wazuh 4.x command {command!r:.40} is neither add nor delete")
            self.undo = command == "delete"
        elif isinstance(value.get("wazuh"), dict):
            self.version = 5
            self.alert = value
            if command not in ("enable", "disable"):
                raise BadLine(f"Wazuh 5.x command {command!r:.40} is neither enable nor disable")
            self.undo = command == "disable"
        else:
            raise BadLine("not a Wazuh active-response message (neither 4.x parameters.alert nor 5.x wazuh)")
        self.origin = _get(value, "origin.name") if self.version == 4 else None

    def add_id(self) -> str:
        """The id of the detection the alert makes: the same for its add and its delete."""
        alert = self.alert
        agent = _get(alert, "agent.id") if self.version == 4 else _get(alert, "wazuh.agent.id")
        ident = alert.get("id") if self.version == 4 else _get(alert, "event.id")
        if isinstance(ident, str) and ident and isinstance(agent, (str, type(None))):
            return f"wazuh:{agent or '-'}:{ident}"[:1024]
        # No alert id: a digest of the alert itself (without the command, which differs between add and delete).
        body = {k: v for k, v in alert.items() if k != "command"}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=True).encode()).hexdigest()
        return f"wazuh:{digest[:32]}"

    def detection(self) -> dict[str, Any]:
        alert, v4 = self.alert, self.version == 4
        rule = alert.get("rule") if v4 else _get(alert, "wazuh.rule") or alert.get("rule")
        rule = rule if isinstance(rule, dict) else {}
        add_id = self.add_id()
        detection: dict[str, Any] = {"type": "undo" if self.undo else "wazuh", "source": "wazuh",
                                     "id": f"{add_id}:undo" if self.undo else add_id}
        if self.undo:
            detection["undo_of"] = add_id
        level = severity(rule.get("level")) or (None if v4 else severity(_get(alert, "event.severity")))
        if level is not None:
            detection["severity"] = level
        threat = clean_text(rule.get("description"), 4096) or clean_text(rule.get("name"), 4096)
        if threat is None and clean_text(rule.get("id"), 64):
            threat = f"Wazuh rule {rule['id']}"
        if threat is not None:
            detection["threat_name"] = threat
        path = absolute_path(_get(alert, "syscheck.path")) if v4 else absolute_path(_get(alert, "file.path"))
        for key in () if path is not None else DATA_PATHS:
            path = absolute_path(_get(alert, f"data.{key}"))
            if path is not None:
                break
        if path is not None:
            detection["file_path"] = path
        sha = _get(alert, "syscheck.sha256_after") if v4 else _get(alert, "file.hash.sha256")
        if isinstance(sha, str) and _SHA256.fullmatch(sha):
            detection["sha256"] = sha.lower()
        host = clean_text(_get(alert, "agent.name") if v4 else
                          _get(alert, "wazuh.agent.name") or _get(alert, "agent.name"), 255)
        if host is not None:
            detection["host"] = host
        when = _timestamp(alert.get("timestamp") if v4 else alert.get("@timestamp") or alert.get("timestamp"))
        if when is not None:
            detection["detected_at"] = when
        detection["wazuh"] = self.raw
        return detection


class _Input:
    """execd's side of the conversation, one line at a time, with a deadline for its answer."""

    def __init__(self, reader: LineReader) -> None:
        self.reader = reader
        self.batches = reader.batches()
        self.waiting: list[tuple[int, bytes | None]] = []

    def next_line(self, timeout: float | None) -> tuple[int, bytes | None] | None:
        """The next line, waiting at most `timeout` seconds for it; None at EOF or on timeout."""
        if not self.waiting:
            if timeout is not None:
                ready, _, _ = select.select([self.reader.fd], [], [], timeout)
                if not ready:
                    return None
            self.waiting = list(next(self.batches, []))
        return self.waiting.pop(0) if self.waiting else None


def _check_keys(program: str, keys: list[str]) -> bytes:
    return json.dumps({"version": 1, "origin": {"name": program, "module": "active-response"},
                       "command": "check_keys", "parameters": {"keys": keys}}).encode() + b"\n"


def converse(reader: LineReader, out_fd: int, program: str,
             timeout: float = HANDSHAKE_TIMEOUT) -> tuple[Outcome, str | None]:
    """Reads execd's message, answers the handshake when it asks for one, and returns the outcome to write
    (or the rejection) with a note for standard error, if any."""
    execd = _Input(reader)
    first = execd.next_line(None)
    if first is None:
        return Rejected((), "no message on standard input (run by Wazuh's execd?)"), None
    lineno, line = first
    if line is None:
        return Rejected((lineno,), f"message longer than {reader.max_line} bytes"), None
    try:
        message = Message(parse_json_line(line))
        detection = message.detection()
    except BadLine as exc:
        return Rejected((lineno,), str(exc)), None
    outcome: Outcome = Detection((lineno,), detection)
    if message.version != 4 or message.undo:
        return outcome, None
    # 4.x add: execd waits for our keys, then says whether this key already ran.
    os.write(out_fd, _check_keys(program, [detection["id"]]))
    reply = execd.next_line(timeout)
    if reply is None or reply[1] is None:
        return outcome, "execd did not answer check_keys: writing the detection anyway"
    try:
        answer = parse_json_line(reply[1])
    except BadLine as exc:
        return outcome, f"execd's answer to check_keys is not JSON ({exc}): writing the detection anyway"
    command = answer.get("command") if isinstance(answer, dict) else None
    if command == "abort":
        return Ignored((lineno,), "execd answered abort: this alert already ran (a replay); nothing written"), None
    if command != "continue":
        return outcome, f"execd answered {command!r:.40} to check_keys: writing the detection anyway"
    return outcome, None


__all__ = ["HANDSHAKE_TIMEOUT", "Message", "converse", "severity"]
