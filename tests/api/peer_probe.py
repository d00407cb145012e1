"""Run as another user by test_auth_e2e.py: calls every API method once and prints {method: outcome} as JSON.

The outcome is "ok" or the error code. Params are chosen so that an allowed call changes nothing
(unknown ids, an invalid detection), except `reload`, which is harmless.
"""

from __future__ import annotations

import json
import socket
import sys

from sdd_client import protocol

CALLS = {
    "ping": {}, "status": {}, "workflows.list": {}, "workflows.get": {"workflow_id": "notify3"},
    "workflows.validate": {"text": "workflow_id: x\nsteps: []\n"}, "runs.list": {"limit": 1},
    "runs.get": {"run_id": "no-such-run"}, "runs.stats": {}, "detections.list": {"limit": 1}, "detections.get": {"id": "no-such-detection"},
    "quarantine.list": {"limit": 1}, "runs.start": {"workflow_id": "no-such-workflow"},
    "runs.cancel": {"run_id": "no-such-run"}, "detections.submit": {"detection": {"severity": "low"}},
    "quarantine.restore": {"id": "no-such-entry"}, "reload": {}, "subscribe": {},
}


def call(path: str, method: str, params: dict) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(path)
        protocol.send_message(sock, protocol.request(1, method, params))
        reply = protocol.recv_message(sock, max_depth=protocol.REPLY_MAX_DEPTH)
    if reply is None:
        return "closed"
    return reply["error"]["code"] if "error" in reply else "ok"


def main() -> None:
    path = sys.argv[1]
    print(json.dumps({method: call(path, method, params) for method, params in CALLS.items()}))


if __name__ == "__main__":
    main()
