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
