"""The spool as a scanner sees it: every file ends as a run, a mark or a rejection — none is lost."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from tests.support.daemon import DaemonProcess
from tests.support.workflows import notify_workflow

ACCOUNTED = "SELECT count(*) FROM detections WHERE state != 'queued'"


def completed_runs(d: DaemonProcess) -> int:
    return d.count("SELECT count(*) FROM runs WHERE status = 'completed'")


def test_ready_arrives_on_the_notify_socket_after_the_first_scan(daemon: DaemonProcess) -> None:
    assert any("READY=1" in line for line in daemon.notify_lines)
    assert daemon.socket.exists()  # the API socket was bound before READY=1


def test_a_thousand_files_are_all_processed(daemon: DaemonProcess) -> None:
    names = [daemon.drop({"type": "malware", "file_path": f"/tmp/f{i}", "threat_name": "T", "severity": "high"})
             for i in range(1000)]
    daemon.wait_for(lambda: completed_runs(daemon) == 1000, timeout=120, what="1000 completed runs")
    assert daemon.count("SELECT count(*) FROM detections WHERE state = 'matched'") == 1000
    assert daemon.count("SELECT count(DISTINCT spool_name) FROM detections") == len(set(names))
    assert daemon.count("SELECT count(*) FROM steps WHERE status = 'completed'") == 5000
    daemon.wait_for(lambda: not daemon.spool_files("cur") and not daemon.spool_files("new"), what="empty spool")


def test_files_there_before_start_and_crash_leftovers_are_processed(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, workflows={"notify5": notify_workflow()})
    for sub in ("new", "cur", "tmp", "rejected"):
        (d.spool / sub).mkdir(parents=True, exist_ok=True)
    for i in range(20):
        d.drop({"type": "malware", "file_path": f"/tmp/pre{i}"})
    # A crash after claiming: a file in cur/ only, and one linked into cur/ but not yet unlinked from new/.
    (d.spool / "cur" / "leftover").write_text(json.dumps({"type": "malware", "file_path": "/tmp/left"}))
    (d.spool / "new" / "halfway").write_text(json.dumps({"type": "malware", "file_path": "/tmp/half"}))
    os.link(d.spool / "new" / "halfway", d.spool / "cur" / "halfway")
    with d:
        d.wait_for(lambda: completed_runs(d) == 22, timeout=60, what="22 runs")
        assert d.count("SELECT count(*) FROM detections") == 22  # the half-claimed file counted once
        d.wait_for(lambda: not d.spool_files("cur") and not d.spool_files("new"), what="empty spool")


def test_inotify_overflow_loses_nothing(tmp_path: Path) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    total = limit + 2000
    # No workflow matches: the test is about intake, so each detection costs one row.
    with DaemonProcess(tmp_path, workflows={"other": notify_workflow("other", 1, "pua")},
                       config_overrides={"logging": {"level": "warning"},
                                         "intake": {"rescan_interval": 3600.0, "max_queued": 100000}}) as d:
        d.signal(signal.SIGSTOP)
        try:
            for i in range(total):
                d.drop({"type": "malware", "file_path": f"/tmp/o{i}"})
        finally:
            d.signal(signal.SIGCONT)
        d.wait_for(lambda: d.count(ACCOUNTED) == total, timeout=240, interval=0.2, what=f"{total} detections")
        assert d.count("SELECT count(*) FROM detections") == total
        assert "overflow" in d.log().lower()  # the kernel did drop events; the rescan found every file
        d.wait_for(lambda: not d.spool_files("new") and not d.spool_files("cur"), what="empty spool")


def test_bad_files_are_rejected_with_a_reason_and_the_daemon_carries_on(daemon: DaemonProcess) -> None:
    new = daemon.spool / "new"
    daemon.drop(b"{this is not json", "invalid-json")
    daemon.drop(os.urandom(4096).replace(b"{", b"\x00"), "binary-junk")
    daemon.drop(b'{"type": "malware", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}', "too-big")
    daemon.drop(b"", "empty")
    daemon.drop(b'[{"type": "malware"}]', "array")
    daemon.drop(b"[" * 100_000 + b"]" * 100_000, "deep")
    daemon.drop(b'{"type": "malware", "x": "\xff\xfe"}', "bad-utf8")
    daemon.drop(b'{"type": "malware", "process_start_time": 1e999}', "out-of-range")
    os.symlink("/etc/shadow", new / "shadow-link")
    os.mkfifo(new / "fifo")
    os.mkdir(new / "directory")
    expected = {
        "invalid-json": "invalid JSON", "binary-junk": "", "too-big": "too large", "empty": "empty file",
        "array": "got an array", "deep": "nested too deeply", "bad-utf8": "not valid UTF-8",
        "shadow-link": "symbolic link", "fifo": "FIFO", "directory": "directory",
        "out-of-range": "number 1e999 is out of range",
    }
    good = daemon.drop({"type": "malware", "file_path": "/tmp/good"})
    rejected = daemon.spool / "rejected"
    daemon.wait_for(lambda: all((rejected / f"{n}.reason").exists() for n in expected), what="every rejection")
    for name, reason in expected.items():
        text = (rejected / f"{name}.reason").read_text()
        assert reason in text, (name, text)
        assert os.path.lexists(rejected / name)
    assert os.readlink(rejected / "shadow-link") == "/etc/shadow"  # moved, never followed
    daemon.wait_for(lambda: completed_runs(daemon) == 1, what="the good detection's run")
    assert daemon.count("SELECT count(*) FROM detections WHERE spool_name = ?", (good,)) == 1
    assert daemon.spool_files("new") == []


def test_same_id_twice_is_a_duplicate(daemon: DaemonProcess) -> None:
    daemon.drop({"id": "scan-1", "type": "malware", "file_path": "/tmp/a"})
    daemon.drop({"id": "scan-1", "type": "malware", "file_path": "/tmp/a"})
    daemon.wait_for(lambda: daemon.count(ACCOUNTED) == 2, what="both detections")
    states = sorted(r[0] for r in daemon.query("SELECT state FROM detections"))
    assert states == ["duplicate", "matched"]
    assert completed_runs(daemon) == 1 or daemon.count("SELECT count(*) FROM runs") == 1


def test_a_backlog_beyond_the_memory_window_is_read_back_from_the_database_once(tmp_path: Path) -> None:
    total = 2500  # more than the dispatcher keeps in memory (1000): the rest is re-read from SQLite
    with DaemonProcess(tmp_path, workflows={"one": notify_workflow("one", 1)},
                       config_overrides={"logging": {"level": "warning"}, "intake": {"max_queued": 5000},
                                         "engine": {"max_concurrent_runs": 2}}) as d:
        d.signal(signal.SIGSTOP)  # let the whole burst land before the daemon looks
        try:
            for i in range(total):
                d.drop({"type": "malware", "file_path": f"/tmp/w{i}"})
        finally:
            d.signal(signal.SIGCONT)
        d.wait_for(lambda: d.count(ACCOUNTED) == total, timeout=180, interval=0.2, what="every detection")
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'completed'") == total,
                   timeout=60, what="every run")
        assert d.count("SELECT count(DISTINCT detection_id) FROM runs") == total  # one run each, none twice
