"""`sdd-fleet tail` against a real nats-server: every host publishes to the stream, so what it prints is hostile
input (escape sequences, lines of its own, JSON that is no object or nests without end) and a positive control."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.support.nats import NatsServer, add_stream, js_call, require_nats

REAL = {"device": {"hostname": "host-a"}, "type_name": "Detection Finding: Create", "status": "New",
        "message": "Win.Test in /srv/x.exe"}
HOSTILE: list[bytes] = [
    json.dumps({"device": {"hostname": "evil\x1b]0;owned\x07"}, "type_name": "x\nhost-z\tforged\tline",
                "status": "\x1b[2J", "message": "\x1b[31mred\u202etxt"}).encode(),
    b"[" * 60_000,                                          # json.loads: RecursionError, and the tail ended
    b'{"device": "host-b", "status": ["a"], "message": {"m": 1}}',  # wrong types where text is expected
    b"[1, 2]",
    b"\xff\xfe not UTF-8 \x1b[2J",
    b'{"a": NaN}',
]


def tail(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    count = str(len(HOSTILE) + 1)
    return subprocess.run([sys.executable, "-m", "sdd.fleet.tool", "--server", url, "tail", "SDD", "--count", count,
                           "--timeout", "60", *extra], capture_output=True, text=True, timeout=90, check=False)


def test_tail_prints_each_hostile_message_as_one_printable_line(nats_server: NatsServer) -> None:
    require_nats()
    add_stream(nats_server.url, "SDD", ["sdd.events.>"])

    async def publish(nc: Any, js: Any) -> None:
        for data in (json.dumps(REAL).encode(), *HOSTILE):
            await js.publish("sdd.events.host-x", data)
    js_call(nats_server.url, publish)

    text = tail(nats_server.url)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "host-a\tDetection Finding: Create\tNew\tWin.Test in /srv/x.exe"  # positive control
    assert len(lines) == len(HOSTILE) + 1 and all(line.count("\t") == 3 for line in lines)
    assert all(ch == "\t" or ch.isprintable() for ch in text.stdout.replace("\n", ""))
    assert lines[1].startswith("evil?]0;owned?\tx?host-z?forged?line\t?[2J\t?[31mred?txt")
    assert lines[2] == "host-x\tNone:None\t\t" + "[" * 200
    assert lines[3] == "host-x\tNone:None\t['a']\t{'m': 1}"

    raw = tail(nats_server.url, "--json")
    assert raw.returncode == 0, raw.stderr
    events = [json.loads(line) for line in raw.stdout.splitlines()]
    assert events[0] == REAL and len(events) == len(HOSTILE) + 1
    assert events[1]["status"] == "\x1b[2J" and raw.stdout.isascii() and "\x1b" not in raw.stdout
    assert events[2] == {"message": "[" * 200} and events[4] == {"message": "[1, 2]"}
