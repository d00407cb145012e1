"""The wire protocol: frames round-trip, and hostile bytes become typed errors, never crashes."""

from __future__ import annotations

import asyncio
import socket
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sdd_client import protocol
from sdd_client.errors import FrameTooLarge, MalformedFrame, ProtocolError, TruncatedFrame


def test_frame_is_big_endian_length_then_msgpack_map():
    frame = protocol.encode({"id": 7, "method": "ping", "params": {}})
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert msgpack.unpackb(frame[4:]) == {"id": 7, "method": "ping", "params": {}}


def test_decode_round_trips_nested_data():
    message = {"id": 1, "result": {"items": [{"a": [1, 2.5, None, True, "x", b"\x00"]}], "cursor": None}}
    assert protocol.decode(protocol.pack_payload(message)) == message


@pytest.mark.parametrize("payload, fragment", [
    (msgpack.packb([1, 2]), "must be a msgpack map"),
    (msgpack.packb("text"), "must be a msgpack map"),
    (b"\xc1", "not valid msgpack"),
    (b"\x81\x01\x02", "not allowed for map key"),
    (b"\x81\xa1a", "incomplete"),
    (b"\x81\xa1a\x01\x01", "more than one"),
    (b"\xa2\xff\xfe", "not valid msgpack"),
    (b"\xd6\xff\x00\x00\x00\x00", "max_ext_len"),
    (b"\xdd\xff\xff\xff\xff", "max_array_len"),
    (b"\x81\xa1a" + b"\x91" * 40 + b"\xc0", "deeper than 32"),
    (b"\x81\xa1a" + b"\x91" * 5000 + b"\xc0", "deeper"),
])
def test_decode_refuses_malformed_payloads(payload, fragment):
    with pytest.raises(MalformedFrame, match=fragment):
        protocol.decode(payload)


def test_the_depth_limit_holds_at_its_edge_for_the_shortest_payloads():
    # decode skips the depth walk for a payload no longer than the limit (each level takes a byte). The
    # tightest payloads of each depth around the limit show that nothing deeper slips through.
    for limit in range(1, 10):
        for lists in range(12):
            payload = b"\x81\xa0" + b"\x91" * lists + b"\x80"  # {"": [[...[{}]...]]}: one byte a level
            depth = lists + 2
            if depth > limit:
                with pytest.raises(MalformedFrame, match=f"deeper than {limit}"):
                    protocol.decode(payload, max_depth=limit)
            else:
                assert protocol.decode(payload, max_depth=limit) is not None


def test_length_prefix_over_one_mebibyte_is_refused_before_reading():
    with pytest.raises(FrameTooLarge):
        protocol.frame_length(struct.pack(">I", 0xFFFFFFFF))
    with pytest.raises(FrameTooLarge):
        protocol.frame_length(struct.pack(">I", protocol.MAX_FRAME + 1))
    assert protocol.frame_length(struct.pack(">I", protocol.MAX_FRAME)) == protocol.MAX_FRAME
    with pytest.raises(MalformedFrame):
        protocol.frame_length(struct.pack(">I", 0))


def test_encode_refuses_a_message_that_does_not_fit():
    with pytest.raises(FrameTooLarge):
        protocol.encode({"blob": b"x" * (protocol.MAX_FRAME + 1)})


@pytest.mark.parametrize("message, fragment", [
    ({"method": "ping"}, "'id'"),
    ({"id": True, "method": "ping"}, "'id'"),
    ({"id": 1}, "'method'"),
    ({"id": 1, "method": ""}, "'method'"),
    ({"id": 1, "method": "ping", "params": [1]}, "'params'"),
    ({"id": 1, "method": "ping", "extra": 1}, "unknown request field"),
])
def test_parse_request_names_the_bad_field(message, fragment):
    with pytest.raises(MalformedFrame, match=fragment):
        protocol.parse_request(message)


def test_parse_request_defaults_params_to_an_empty_map():
    assert protocol.parse_request({"id": 3, "method": "status"}) == protocol.Request(3, "status", {})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_decode_of_arbitrary_bytes_returns_a_map_or_raises_protocol_error(data):
    try:
        assert isinstance(protocol.decode(data), dict)
    except ProtocolError:
        pass


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=10), json_like, max_size=5))
def test_any_small_map_round_trips(message):
    assert protocol.decode(protocol.encode(message)[4:], max_depth=protocol.REPLY_MAX_DEPTH) == message


def test_blocking_helpers_read_frames_and_detect_truncation():
    a, b = socket.socketpair()
    with a, b:
        protocol.send_message(a, {"id": 1, "result": "ok"})
        assert protocol.recv_message(b) == {"id": 1, "result": "ok"}
        a.sendall(protocol.encode({"id": 2})[:-1])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(TruncatedFrame):
            protocol.recv_message(b)


def test_blocking_recv_returns_none_on_clean_end_of_stream():
    a, b = socket.socketpair()
    with b:
        a.close()
        assert protocol.recv_message(b) is None


async def test_async_helpers_read_frames_and_detect_truncation():
    reader = asyncio.StreamReader()
    reader.feed_data(protocol.encode({"id": 1}))
    reader.feed_data(protocol.encode({"id": 2})[:3])
    reader.feed_eof()
    assert await protocol.read_message(reader) == {"id": 1}
    with pytest.raises(TruncatedFrame):
        await protocol.read_message(reader)
