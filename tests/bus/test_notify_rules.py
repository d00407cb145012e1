"""What sdd-notifier shows for which signal (pure rules, no bus)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sdd_client.notify_rules import MAX_BODY, MAX_SUMMARY, Urgency, clean, escape_markup, notice_for


@pytest.mark.parametrize(
    ("severity", "urgency"), [("critical", Urgency.CRITICAL), ("high", Urgency.NORMAL), ("HIGH", Urgency.NORMAL)]
)
def test_critical_and_high_detections_are_shown(severity: str, urgency: Urgency) -> None:
    n = notice_for("DetectionReceived", ["d1", "malware", severity, "/home/a/x.exe"])
    assert n is not None
    assert n.urgency is urgency
    assert n.body == "/home/a/x.exe"
    assert severity.lower() in n.summary and "malware" in n.summary


@pytest.mark.parametrize("severity", ["medium", "low", "info", "", "criticalish"])
def test_lesser_detections_are_not_shown(severity: str) -> None:
    assert notice_for("DetectionReceived", ["d1", "malware", severity, "/x"]) is None


@pytest.mark.parametrize(
    ("status", "urgency", "word"),
    [
        ("failed", Urgency.CRITICAL, "failed"),
        ("rolled_back", Urgency.NORMAL, "rolled back"),
        ("interrupted", Urgency.CRITICAL, "interrupted"),
    ],
)
def test_bad_run_outcomes_are_shown(status: str, urgency: Urgency, word: str) -> None:
    n = notice_for("RunFinished", ["r1", "critical_threat_response", status, 2.5])
    assert n is not None and n.urgency is urgency
    assert word in n.summary and "critical_threat_response" in n.summary
    assert "r1" in n.body and "2.5 s" in n.body


@pytest.mark.parametrize("status", ["completed", "cancelled", "running", "pending", ""])
def test_good_or_deliberate_run_outcomes_are_not_shown(status: str) -> None:
    assert notice_for("RunFinished", ["r1", "wf", status, 1.0]) is None


@pytest.mark.parametrize(
    ("wanted", "urgency"),
    [("low", Urgency.LOW), ("normal", Urgency.NORMAL), ("critical", Urgency.CRITICAL),
     ("Critical", Urgency.CRITICAL), ("bogus", Urgency.NORMAL), ("", Urgency.NORMAL)],
)
def test_workflow_notifications_map_urgency_names_to_the_spec_byte(wanted: str, urgency: Urgency) -> None:
    n = notice_for("Notification", ["Title", "Body", wanted])
    assert n is not None and n.urgency is urgency and int(n.urgency) in (0, 1, 2)
    assert (n.summary, n.body) == ("Title", "Body")


@pytest.mark.parametrize(
    ("member", "args"),
    [
        ("RunStarted", ["r", "wf", "d"]),
        ("StepFinished", ["r", "s", "failed", 1.0]),
        ("DetectionReceived", ["too", "few"]),
        ("RunFinished", ["r", "wf", "failed"]),
        ("Notification", []),
        ("Unknown", ["a"]),
    ],
)
def test_other_or_malformed_signals_are_not_shown(member: str, args: list[object]) -> None:
    assert notice_for(member, args) is None


def test_hostile_text_is_cleaned() -> None:
    n = notice_for("DetectionReceived", ["d", "mal\x1bware", "critical", "/tmp/\u202etxt.exe\x00\x07" + "a" * 5000])
    assert n is not None
    assert "\x1b" not in n.summary and "\u202e" not in n.body and "\x00" not in n.body and "\x07" not in n.body
    assert len(n.body) <= MAX_BODY and len(n.summary) <= MAX_SUMMARY


def test_markup_escaping() -> None:
    assert escape_markup("<b>x</b> & y") == "&lt;b&gt;x&lt;/b&gt; &amp; y"


@given(st.text())
def test_clean_never_returns_control_characters_or_too_much(text: str) -> None:
    out = clean(text, 100)
    assert len(out) <= 100
    assert not any(ord(c) < 32 and c != "\n" for c in out)


def test_the_notifier_does_not_import_the_daemon_package() -> None:
    """sdd-notifier ships in the client distribution: it must work where the daemon is not installed."""
    import subprocess
    import sys

    code = "import sys, sdd_client.notifier; sys.exit(1 if any(m == 'sdd' or m.startswith('sdd.') for m in sys.modules) else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60, check=False).returncode == 0


# --- command-line options (no bus) -----------------------------------------------------------------------

ENV = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus"}


def test_listens_on_the_system_bus_and_notifies_on_the_session_bus_by_default() -> None:
    from sdd_client.notifier import options_from_args, parse_args

    o = options_from_args(parse_args([]), ENV)
    assert o.signal_address == "unix:path=/run/dbus/system_bus_socket"
    assert o.notify_address == "unix:path=/run/user/1000/bus"
    o = options_from_args(parse_args([]), {**ENV, "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/x"})
    assert o.signal_address == "unix:path=/x"


def test_session_and_address_options() -> None:
    from sdd_client.notifier import options_from_args, parse_args

    assert options_from_args(parse_args(["--session"]), ENV).signal_address == ENV["DBUS_SESSION_BUS_ADDRESS"]
    o = options_from_args(parse_args(["--address", "unix:path=/a", "--notify-address", "unix:path=/b"]), {})
    assert (o.signal_address, o.notify_address) == ("unix:path=/a", "unix:path=/b")
    o = options_from_args(parse_args(["--session"]), {"XDG_RUNTIME_DIR": "/run/user/7"})
    assert o.signal_address == o.notify_address == "unix:path=/run/user/7/bus"


def test_bad_options_are_usage_errors() -> None:
    from sdd_client.notifier import NotifierError, options_from_args, parse_args

    with pytest.raises(SystemExit) as e:
        parse_args(["--session", "--address", "unix:path=/a"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        parse_args(["--max-notifications", "0"])
    with pytest.raises(NotifierError, match="--address"):
        options_from_args(parse_args(["--address", "garbage"]), ENV)
    with pytest.raises(NotifierError, match="no session bus"):
        options_from_args(parse_args([]), {})
