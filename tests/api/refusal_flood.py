"""Run as another user by test_refusals_e2e.py: sends `count` calls of `method` on ONE connection as fast as
the daemon answers, and prints {error code or "ok": how many} as JSON."""

from __future__ import annotations

import json
import socket
import sys
from collections import Counter

from sdd_client import protocol


def main() -> None:
    path, method, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    outcomes: Counter[str] = Counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(path)
        for i in range(1, count + 1):
            protocol.send_message(sock, protocol.request(i, method, {"workflow_id": f"wf-{i % 7}"}))
            reply = protocol.recv_message(sock, max_depth=protocol.REPLY_MAX_DEPTH)
            outcomes["closed" if reply is None else reply["error"]["code"] if "error" in reply else "ok"] += 1
            if reply is None:
                break
    print(json.dumps(outcomes))


if __name__ == "__main__":
    main()
