"""sddctl's pure helpers: human formatting, and the spool writer (real files, real rename)."""

from __future__ import annotations

import io
import json
import os
import re
import time

import psutil
import pytest
from sdd_client import output, spool
from sdd_client.output import Style


def test_relative_time_reads_like_a_person():
    now = 1_000_000.0
    assert output.relative_time(now, now) == "just now"
    assert output.relative_time(now - 42, now) == "42 s ago"
    assert output.relative_time(now - 180, now) == "3 min ago"
    assert output.relative_time(now - 5 * 3600, now) == "5 h ago"
    assert output.relative_time(now - 86400, now) == "1 day ago"
    assert output.relative_time(now - 3 * 86400, now) == "3 days ago"
    assert output.relative_time(now + 240, now) == "in 4 min"
    assert output.relative_time(None, now) == "-"


def test_duration_is_compact():
    assert output.duration(0.1234) == "0.12s"
    assert output.duration(42.0) == "42.0s"
    assert output.duration(187) == "3min 07s"
    assert output.duration(7500) == "2h 05min"
    assert output.duration(None) == "-"


def test_table_aligns_columns_even_with_colour():
    style = Style(colour=True)
    lines = output.table(["A", "STATUS", "C"], [["x", style.status("completed"), "1"],
                                                ["longer", style.status("failed"), "2"]], style)
    assert "\x1b[" in lines[1]
    plain = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines]
    assert plain[0].index("STATUS") == plain[1].index("completed") == plain[2].index("failed")
    assert plain[0].index("C") == plain[1].index("1") == plain[2].index("2")


def test_colour_is_off_for_pipes_and_with_no_color(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert output.colour_enabled(Tty()) is True
    assert output.colour_enabled(io.StringIO()) is False
    monkeypatch.setenv("NO_COLOR", "1")
    assert output.colour_enabled(Tty()) is False
    assert Style(False).status("failed") == "failed"


def test_safe_keeps_terminal_escapes_from_hostile_data_out():
    assert output.safe("evil\x1b]0;title\x07name\n") == "evil?]0;title?name?"
    assert len(output.safe("x" * 500, 50)) == 50


def test_spool_resolution_order(tmp_path, monkeypatch):
    config = tmp_path / "sdd.toml"
    config.write_text('[paths]\nspool = "/srv/spool-from-config"\n')
    env = {"SDD_SPOOL": "/env/spool", "SDD_CONFIG": str(config)}
    assert str(spool.resolve_spool("/explicit", None, env)) == "/explicit"
    assert str(spool.resolve_spool(None, None, env)) == "/env/spool"
    assert str(spool.resolve_spool(None, None, {"SDD_CONFIG": str(config)})) == "/srv/spool-from-config"
    assert str(spool.resolve_spool(None, str(config), {})) == "/srv/spool-from-config"
    monkeypatch.setattr(spool, "SYSTEM_CONFIG", tmp_path / "absent.toml")
    assert spool.resolve_spool(None, None, {}) == spool.DEFAULT_SPOOL
    with pytest.raises(spool.UsageError, match="does not exist"):
        spool.resolve_spool(None, str(tmp_path / "missing.toml"), {})
    bad = tmp_path / "bad.toml"
    bad.write_text('[paths]\nspool = "relative"\n')
    with pytest.raises(spool.UsageError, match="absolute"):
        spool.resolve_spool(None, str(bad), {})


def test_write_detection_is_atomic_and_complete(tmp_path):
    for sub in ("tmp", "new"):
        (tmp_path / sub).mkdir()
    done = spool.write_detection(tmp_path, {"type": "malware", "file_path": "/tmp/ü x"})
    assert done.path.parent == tmp_path / "new" and os.listdir(tmp_path / "tmp") == []
    assert json.loads(done.path.read_text(encoding="utf-8")) == {"type": "malware", "file_path": "/tmp/ü x"}
    assert ":" not in done.path.name and "/" not in done.path.name
    with pytest.raises(spool.UsageError):
        spool.write_detection(tmp_path, {"severity": "high"})
    with pytest.raises(spool.SubmitError, match="at most"):
        spool.write_detection(tmp_path, {"type": "x", "blob": "a" * (spool.MAX_DETECTION + 1)})
    with pytest.raises(spool.SubmitError, match="does not exist"):
        spool.write_detection(tmp_path / "nowhere", {"type": "x"})
    assert os.listdir(tmp_path / "tmp") == []


def test_clamav_detection_from_the_virusevent_variables():
    d = spool.clamav_detection({"CLAM_VIRUSEVENT_FILENAME": "/home/a/x", "CLAM_VIRUSEVENT_VIRUSNAME": "Eicar"})
    assert (d["type"], d["file_path"], d["threat_name"], d["scanner"]) == ("malware", "/home/a/x", "Eicar", "clamav")
    with pytest.raises(spool.UsageError, match="CLAM_VIRUSEVENT_VIRUSNAME"):
        spool.clamav_detection({"CLAM_VIRUSEVENT_FILENAME": "/x"})


def test_process_start_time_matches_psutil():
    assert spool.process_start_time(os.getpid()) == pytest.approx(psutil.Process().create_time(), abs=0.05)
    assert spool.process_start_time(os.getpid()) <= time.time()
    with pytest.raises(spool.SubmitError):
        spool.process_start_time(2**22 + 12345)


def test_closed_by_peer_never_waits_on_an_open_connection():
    import socket

    from sdd_client.client import _closed_by_peer

    a, b = socket.socketpair()
    with a, b:
        a.settimeout(60)  # a timeout turns plain non-blocking reads into waits: must not apply here
        started = time.monotonic()
        assert _closed_by_peer(a) is False
        assert time.monotonic() - started < 30
        b.close()
        assert _closed_by_peer(a) is True


def test_history_since_accepts_ages_epochs_and_iso():
    from sdd_client.run_commands import since_value

    assert since_value("30m", now=10_000.0) == 10_000.0 - 1800
    assert since_value("2h", now=10_000.0) == 10_000.0 - 7200
    assert since_value("7d", now=1e6) == 1e6 - 7 * 86400
    assert since_value("1764064800") == 1764064800.0
    assert since_value("2026-11-25T10:00:00Z") == "2026-11-25T10:00:00Z"
    assert since_value("2m", now=10_000.0) == 10_000.0 - 120
    assert since_value("90s", now=10_000.0) == 10_000.0 - 90
    for bad in ("soon", "2x", "-3h", "inf", "1e999d"):
        with pytest.raises(ValueError, match="an age"):
            since_value(bad)
