"""Schedules fire on time without bursts; sd_notify datagrams reach path and abstract sockets."""

from __future__ import annotations

import datetime as dt
import os
import socket
from pathlib import Path

import pytest

from sdd.dispatch.scheduler import next_due, parse_at
from sdd.engine import Schedule
from sdd.sdnotify import Notifier, watchdog_interval


def test_every_steps_over_missed_ticks_instead_of_bursting() -> None:
    s = Schedule(every=10.0)
    assert next_due(s, 100.0) == 110.0
    assert next_due(s, 112.0, last_due=110.0) == 120.0
    # A run that overran three periods: the next tick is in the future, not three at once.
    assert next_due(s, 145.0, last_due=110.0) == 150.0


def test_at_is_the_next_local_wall_clock_time() -> None:
    now = dt.datetime(2026, 11, 25, 2, 0).timestamp()
    due = dt.datetime.fromtimestamp(next_due(Schedule(at="03:00"), now))
    assert (due.day, due.hour, due.minute) == (25, 3, 0)
    due = dt.datetime.fromtimestamp(next_due(Schedule(at="01:30"), now))
    assert (due.day, due.hour, due.minute) == (26, 1, 30)
    with pytest.raises(ValueError):
        parse_at("25:00")


def test_notify_reaches_a_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        n = Notifier(str(path))
        assert n.ready("up")
        assert server.recv(100) == b"READY=1\nSTATUS=up"
        assert n.stopping()
        assert server.recv(100) == b"STOPPING=1"
        n.close()


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"sdd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        n = Notifier("@" + name)
        assert n.watchdog()
        assert server.recv(100) == b"WATCHDOG=1"
        n.close()


def test_no_notify_socket_is_a_quiet_no_op() -> None:
    assert not Notifier("").ready()


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 2.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None


def test_a_receiver_that_never_reads_cannot_block_the_sender(tmp_path: Path) -> None:
    path = tmp_path / "full.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        n = Notifier(str(path))
        sent = [n.status(f"line {i}") for i in range(1000)]  # returns at once even with the queue full
        assert sent[0] and not sent[-1] and n.dropped > 0
        n.close()
