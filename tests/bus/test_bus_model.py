"""The bridge's pure parts: bus specs, addresses, hub event → signal arguments, D-Bus-safe values."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdd import hub as ev
from sdd.bus import MAX_STRING, BusKind, Properties, clean_str, parse_bus_spec, resolve_address, signal_for


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("system", BusKind.SYSTEM),
        ("session", BusKind.SESSION),
        ("none", BusKind.NONE),
        ("unix:path=/run/dbus/system_bus_socket", BusKind.ADDRESS),
        ("unix:abstract=/tmp/dbus-x,guid=1234", BusKind.ADDRESS),
        ("tcp:host=127.0.0.1,port=4000", BusKind.ADDRESS),
    ],
)
def test_bus_specs(spec: str, kind: BusKind) -> None:
    assert parse_bus_spec(spec) is kind


@pytest.mark.parametrize("spec", ["System", "", "dbus", "unix:", "unix:nopath", "bogus:x=y"])
def test_bad_bus_specs_name_the_setting(spec: str) -> None:
    with pytest.raises(ValueError, match=r"dbus\.bus"):
        parse_bus_spec(spec)


def test_addresses_come_from_the_environment_like_libdbus() -> None:
    assert resolve_address(BusKind.SYSTEM, "system", {}) == "unix:path=/run/dbus/system_bus_socket"
    assert resolve_address(BusKind.SYSTEM, "system", {"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/x"}) == "unix:path=/x"
    assert resolve_address(BusKind.SESSION, "session", {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/s"}) == "unix:path=/s"
    assert resolve_address(BusKind.SESSION, "session", {"XDG_RUNTIME_DIR": "/run/user/1000"}) == (
        "unix:path=/run/user/1000/bus"
    )
    assert resolve_address(BusKind.ADDRESS, "unix:path=/a", {}) == "unix:path=/a"
    with pytest.raises(ConnectionError, match="no session bus"):
        resolve_address(BusKind.SESSION, "session", {})


@pytest.mark.parametrize(
    ("event", "data", "member", "args"),
    [
        (ev.DETECTION_RECEIVED, {"detection_id": 5, "type": "malware"}, "DetectionReceived", ["5", "malware", "", ""]),
        (ev.RUN_STARTED, {"run_id": "r", "workflow_id": "w", "detection_id": None}, "RunStarted", ["r", "w", ""]),
        (ev.STEP_FINISHED, {"run_id": "r", "step_id": "s", "status": "failed", "seconds": "x"}, "StepFinished",
         ["r", "s", "failed", 0.0]),
        (ev.RUN_FINISHED, {"run_id": "r", "workflow_id": "w", "status": "completed", "seconds": float("nan")},
         "RunFinished", ["r", "w", "completed", 0.0]),
        (ev.NOTIFICATION, {"title": "t", "body": "b"}, "Notification", ["t", "b", "normal"]),
    ],
)
def test_hub_events_become_signal_arguments(event: str, data: dict[str, Any], member: str, args: list[Any]) -> None:
    assert signal_for(event, data) == (member, args)


@pytest.mark.parametrize("event", [ev.STEP_STARTED, ev.DETECTION_REJECTED, ev.STATUS_CHANGED, ev.LAGGED, "x"])
def test_other_hub_events_are_not_signals(event: str) -> None:
    assert signal_for(event, {}) is None


@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")), st.integers(),
                 st.none(), st.floats()))
def test_clean_str_is_always_valid_on_the_wire(value: Any) -> None:
    out = clean_str(value)
    out.encode("utf-8")  # no lone surrogates
    assert "\x00" not in out
    assert len(out) <= MAX_STRING


def test_properties_from_a_garbage_status_are_still_valid_d_bus_values() -> None:
    p = Properties.from_status({"version": None, "state": 3, "active_runs": -4, "queued_detections": 2**40})
    assert p == Properties("", "3", 0, 2**32 - 1)
    assert Properties.from_status({"active_runs": "many"}).active_runs == 0
