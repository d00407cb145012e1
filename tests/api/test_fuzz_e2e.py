"""Protocol fuzzing against a live daemon: random and malformed frames never stop it, never disturb other
clients, and nothing in flight is lost. Afterwards it still answers ping and status."""

from __future__ import annotations

import socket
import struct

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sdd_client import protocol
from sdd_client.client import Client

MALFORMED = [
    b"",                                                  # connect and hang up
    b"\x00\x00",                                          # truncated length prefix
    struct.pack(">I", 0xFFFFFFFF),                        # 4 GiB length prefix
    struct.pack(">I", protocol.MAX_FRAME + 1) + b"x" * 100,
    struct.pack(">I", 0),                                 # empty frame
    struct.pack(">I", 100) + b"\x80" * 10,                # truncated payload
    struct.pack(">I", 3) + msgpack.packb([1, 2]),         # non-map payload
    struct.pack(">I", 1) + b"\xc1",                       # never-used msgpack byte
    struct.pack(">I", 5) + b"\x81\x01\x02\x03\x04",       # int map key
    protocol.encode({"id": 1, "method": "ping", "params": {"d": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}),
    struct.pack(">I", 2001) + b"\x81\xa1p" + b"\x91" * 1997 + b"\xc0",   # nesting past msgpack's own limit
    protocol.encode({"id": 1, "method": "no.such.method"}),
    protocol.encode({"id": "one", "method": "ping"}),
    protocol.encode({"id": 1, "method": "status", "params": "all"}),
    protocol.encode({"id": 1, "method": "runs.list", "params": {"limit": 2**64 - 1}}),
    protocol.encode({"id": 1, "method": "runs.start", "params": {"workflow_id": "\x00" * 5}}),
    struct.pack(">I", 6) + b"\x81\xa1a\xd6\xff\x00",      # timestamp extension, truncated
    protocol.encode({"id": 2**64 - 1, "method": "ping"}),
]


def send_raw(path, data: bytes) -> bytes:
    """Sends bytes, half-closes, and returns whatever the daemon answers before it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon may close on an oversized prefix before we finish writing
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def replies(data: bytes) -> list[dict]:
    """Decodes the daemon's answer; every frame it sends must itself be well formed."""
    out = []
    while data:
        length = protocol.frame_length(data[:4])
        out.append(protocol.decode(data[4:4 + length], max_depth=protocol.REPLY_MAX_DEPTH))
        data = data[4 + length:]
    return out


def test_malformed_frames_get_error_replies_and_nothing_is_lost(live):
    with Client(live.socket) as bystander:
        before = bystander.call("runs.list", workflow="notify3", limit=1000)["items"]
        names = []
        for i, frame in enumerate(MALFORMED):
            names.append(live.drop({"type": "note", "id": f"fuzz-{i}"}))  # intake keeps working meanwhile
            answer = replies(send_raw(live.socket, frame))
            for reply in answer:
                assert set(reply) <= {"id", "result", "error"}
            if frame and frame not in (b"\x00\x00",):
                assert answer, f"no reply to {frame[:40]!r}"
            assert bystander.call("ping") == {"pong": True}
        assert bystander.call("status")["state"] == "running"
        live.wait_for(lambda: len(bystander.call("runs.list", workflow="notify3", status="completed",
                                                 limit=1000)["items"]) >= len(before) + len(MALFORMED),
                      what="a run for every detection dropped during the fuzzing")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=200).map(lambda b: struct.pack(">I", len(b)) + b),
    st.dictionaries(st.text(max_size=10), st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=10) | st.binary(max_size=10),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=10),
        max_size=4).map(lambda m: protocol.encode(m)),
    st.fixed_dictionaries({"id": st.integers(0, 10**6), "method": st.sampled_from(
        ["ping", "status", "runs.list", "runs.get", "workflows.get", "detections.list", "quarantine.list",
         "runs.stats", "workflows.list", "nope"]),
        "params": st.dictionaries(st.sampled_from(["limit", "cursor", "run_id", "workflow_id", "status", "since",
                                                   "x"]), st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=20), st.none(),
                                                                   st.floats(allow_nan=True)), max_size=3)},
    ).map(lambda m: protocol.encode(m)),
))
def test_random_frames_never_hurt_the_daemon(live, data):
    for reply in replies(send_raw(live.socket, data)):
        assert ("result" in reply) != ("error" in reply)
        if "error" in reply:
            assert reply["error"]["code"] in {"invalid_params", "not_found", "bad_frame", "unknown_method",
                                              "forbidden", "conflict"}, reply  # never "internal"


def test_after_fuzzing_the_daemon_still_answers(live):
    with Client(live.socket) as c:
        assert c.call("ping") == {"pong": True}
        assert c.call("status")["state"] == "running"
    assert live.proc.poll() is None
