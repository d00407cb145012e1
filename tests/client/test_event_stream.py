"""`EventStream` reads events in bulk: many frames per read, frames split across reads, a cut-off frame."""

from __future__ import annotations

import socket
import threading

import pytest
from sdd_client import protocol
from sdd_client.client import EventStream
from sdd_client.errors import TruncatedFrame


def _stream() -> tuple[EventStream, socket.socket]:
    ours, daemon = socket.socketpair()
    daemon.sendall(protocol.encode(protocol.result_reply(1, {"subscribed": True})))
    stream = EventStream(ours, "test", {})
    assert protocol.recv_message(daemon)["method"] == "subscribe"
    return stream, daemon


def _frame(i: int) -> bytes:
    return protocol.encode(protocol.event_message("step.finished", {"run_id": "r", "step_id": str(i)}))


def test_a_burst_sent_in_one_write_is_read_event_by_event_in_order() -> None:
    stream, daemon = _stream()
    with stream, daemon:
        daemon.sendall(b"".join(_frame(i) for i in range(500)))
        got = [next(stream) for _ in range(500)]
        assert [e.data["step_id"] for e in got] == [str(i) for i in range(500)]
        assert {e.name for e in got} == {"step.finished"}


def test_frames_arriving_a_byte_at_a_time_are_put_back_together() -> None:
    stream, daemon = _stream()
    data = b"".join(_frame(i) for i in range(20))

    def trickle() -> None:
        for byte in data:  # headers and payloads arrive in pieces
            daemon.sendall(bytes([byte]))

    sender = threading.Thread(target=trickle)
    with stream, daemon:
        sender.start()
        got = [next(stream).data["step_id"] for _ in range(20)]
        sender.join()
    assert got == [str(i) for i in range(20)]


def test_a_stream_cut_inside_a_frame_is_an_error_and_a_clean_end_stops_iteration() -> None:
    stream, daemon = _stream()
    with stream:
        daemon.sendall(_frame(1) + _frame(2)[:7])
        daemon.close()
        assert next(stream).data["step_id"] == "1"
        with pytest.raises(TruncatedFrame):
            next(stream)
    stream, daemon = _stream()
    with stream:
        daemon.sendall(_frame(3))
        daemon.close()
        assert [e.data["step_id"] for e in stream] == ["3"]
