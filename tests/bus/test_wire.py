"""The bridge's own signal marshalling gives exactly the bytes dbus-next gives for the contract's signals."""

from __future__ import annotations

import pytest
from dbus_next import Message

from sdd.bus import INTERFACE, OBJECT_PATH
from sdd.bus.model import SIGNALS, clean_double, clean_str
from sdd.bus.wire import signal_message

HOSTILE = ["", "plain", "nul\x00inside", "bad-bytes-\udcff\udcfe.exe", "emoji 🦠 \u202e rtl", "x" * 100_000,
           "é" * 3, "a", "ab", "abc"]  # lengths 1..3 move the padding of the next field


def _args(signature: str, text: str, number: float) -> list[str | float]:
    return [clean_double(number) if code == "d" else clean_str(f"{text}{i}" if i % 2 else text)
            for i, code in enumerate(signature)]


@pytest.mark.parametrize("member", sorted(SIGNALS))
@pytest.mark.parametrize("text", HOSTILE)
def test_signal_bytes_equal_dbus_next_marshalling(member: str, text: str) -> None:
    signature = SIGNALS[member]
    for serial, number in ((1, 0.0), (4_000_000_000, 1.5), (77, float("nan")), (9, -2.25e300)):
        args = _args(signature, text, number)
        expected = Message.new_signal(OBJECT_PATH, INTERFACE, member, signature, args)
        expected.serial = serial
        assert signal_message(member, args, serial) == expected._marshall()


def test_the_contract_signatures_are_the_exported_ones() -> None:
    assert SIGNALS == {"DetectionReceived": "ssss", "RunStarted": "sss", "StepFinished": "sssd",
                       "RunFinished": "sssd", "Notification": "sss"}


def test_marshalled_strings_are_kept_for_reuse_within_a_bound() -> None:
    from sdd.bus import wire

    run = "0190abcdef0123456789abcdef012345"
    first = signal_message("StepFinished", [run, "s1", "completed", 0.5], 3)
    assert run in wire._PIECES  # a run's id recurs in each of its signals
    assert signal_message("StepFinished", [run, "s1", "completed", 0.5], 3) == first
    long_path = "/home/alice/" + "d" * 200
    signal_message("DetectionReceived", ["1", "malware", "high", long_path], 4)
    assert long_path not in wire._PIECES  # long strings (file paths) rarely recur and are not kept
    for i in range(wire._PIECES_MAX * 2):
        signal_message("RunStarted", [f"run-{i}", "wf", "det"], 5)
    assert len(wire._PIECES) <= wire._PIECES_MAX
