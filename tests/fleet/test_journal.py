"""journald's native protocol: what sdd sends, parsed from a datagram socket the test binds (and a real
systemd-journald in a private namespace, read back with journalctl)."""

from __future__ import annotations

import array
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdd.logging import LogEvent, journal, kv
from tests.support.daemon import DaemonProcess

JOURNALD = "/lib/systemd/systemd-journald"


def parse(data: bytes) -> dict[str, list[bytes]]:
    """journald's side of the native protocol: KEY=value lines and KEY\\n<le64 length><bytes>\\n fields."""
    fields: dict[str, list[bytes]] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = nl + 1
        else:
            key = line
            (size,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            value = data[nl + 9:nl + 9 + size]
            assert data[nl + 9 + size:nl + 10 + size] == b"\n"
            i = nl + 10 + size
        assert key and key.decode().replace("_", "A").isalnum() and key.upper() == key and not key.startswith(b"_")
        fields.setdefault(key.decode(), []).append(value)
    return fields


class JournalSocket:
    """A datagram socket standing in for /run/systemd/journal/socket; collects what arrives (fds too)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="sddj-", dir="/tmp")
        self.path = os.path.join(self.dir, "socket")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.records: list[dict[str, list[bytes]]] = []
        self.cond = threading.Condition()
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while self.running:
            try:
                data, anc, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4 * 4))
            except TimeoutError:
                continue
            except OSError:
                return
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[:len(payload) - len(payload) % 4])
                    for fd in fds:
                        data += os.pread(fd, os.fstat(fd).st_size, 0)
                        os.close(fd)
            with self.cond:
                self.records.append(parse(data))
                self.cond.notify_all()

    def wait(self, pred: Any, timeout: float = 30.0) -> list[dict[str, list[bytes]]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (found := [r for r in self.records if pred(r)]):
                left = deadline - time.monotonic()
                assert left > 0, f"no such journal record; got {[r.get('MESSAGE') for r in self.records]}"
                self.cond.wait(left)
            return found

    def close(self) -> None:
        self.running = False
        self.sock.close()
        self.thread.join(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def journal_socket() -> Iterator[JournalSocket]:
    js = JournalSocket()
    yield js
    js.close()


def one(record: dict[str, list[bytes]], key: str) -> str:
    return record[key][0].decode()


def test_the_native_encoding_carries_newlines_and_bytes_as_sized_fields() -> None:
    data = journal.encode([("MESSAGE", "two\nlines"), ("PRIORITY", 3), ("SDD_RAW", b"\xff\x00x"), ("A", "b=c")])
    assert parse(data) == {"MESSAGE": [b"two\nlines"], "PRIORITY": [b"3"], "SDD_RAW": [b"\xff\x00x"], "A": [b"b=c"]}
    assert journal.field_key("file-path") == "FILE_PATH" and journal.field_key("_x") == "X"
    assert journal.field_key("9lives").startswith("F_") and len(journal.field_key("k" * 100)) == 64


def test_a_record_too_large_for_a_datagram_goes_in_a_sealed_memfd(journal_socket: JournalSocket) -> None:
    handler = journal.JournalHandler(journal_socket.path)
    logger = logging.getLogger("sdd.test.journal.large")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        big = "x" * (4 * 1024 * 1024)  # beyond any datagram socket's send buffer
        logger.warning("large", extra=kv(event=LogEvent.GUARD_REFUSED, payload=big, run_id="r1"))
    finally:
        logger.removeHandler(handler)
        handler.close()
    record = journal_socket.wait(lambda r: r.get("MESSAGE") == [b"large"])[0]
    assert one(record, "SDD_PAYLOAD") == big and one(record, "SDD_RUN_ID") == "r1"
    assert one(record, "MESSAGE_ID") == journal.MESSAGE_IDS[LogEvent.GUARD_REFUSED]
    assert one(record, "PRIORITY") == "4" and one(record, "SYSLOG_IDENTIFIER") == "sdd"


def test_auto_uses_the_journal_only_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w") as stream:
        st = os.fstat(stream.fileno())
        assert journal.connected_to_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
        assert not journal.connected_to_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, stream)
        assert not journal.connected_to_journal({"JOURNAL_STREAM": "garbage"}, stream)
        assert not journal.connected_to_journal({}, stream)


CONTAIN = """workflow_id: contain
trigger: {type: malware}
steps:
  - step_id: quarantine
    action: quarantine_file
    params: {file_path: "{{ detection.file_path }}"}
  - step_id: delete_copy
    action: delete_file
    params: {file_path: "{{ detection.file_path }}.copy"}
"""


def test_the_daemon_logs_natively_with_message_ids_and_sdd_fields(tmp_path: Path,
                                                                 journal_socket: JournalSocket) -> None:
    d = DaemonProcess(tmp_path, workflows={"contain": CONTAIN},
                      config_overrides={"logging": {"target": "journal"},
                                        "actions": {"rate_limits": {"delete_file": [0, 60]}}},
                      env={"SDD_JOURNAL_SOCKET": journal_socket.path})
    with d:
        evil = d.root / "evil.exe"
        evil.write_bytes(b"MZ evil")
        (d.root / "evil.exe.copy").write_bytes(b"MZ evil")
        d.drop({"type": "malware", "file_path": str(evil), "threat_name": "T"})
        ids = journal.MESSAGE_IDS
        run = journal_socket.wait(lambda r: r.get("MESSAGE_ID") == [ids[LogEvent.RUN_FINISHED].encode()])[0]
    accepted = journal_socket.wait(lambda r: r.get("MESSAGE_ID") == [ids[LogEvent.DETECTION_ACCEPTED].encode()])[0]
    quarantined = journal_socket.wait(lambda r: r.get("MESSAGE_ID") == [ids[LogEvent.QUARANTINED].encode()])[0]
    refused = journal_socket.wait(lambda r: r.get("MESSAGE_ID") == [ids[LogEvent.GUARD_REFUSED].encode()])[0]
    assert one(run, "SDD_WORKFLOW") == "contain" and one(run, "SDD_STATUS") == "failed"
    assert len(one(run, "SDD_RUN_ID")) == 32 and one(run, "PRIORITY") == "4"  # a failed run warns
    assert one(accepted, "SDD_DETECTION_ID") == "1"
    assert one(quarantined, "SDD_RUN_ID") == one(run, "SDD_RUN_ID") and one(quarantined, "SDD_TARGET") == str(evil)
    assert one(refused, "SDD_GUARD") == "rate_limit:delete_file" and one(refused, "PRIORITY") == "4"
    for record in (run, accepted, quarantined, refused):
        assert one(record, "SYSLOG_IDENTIFIER") == "sdd" and "CODE_FILE" in record
    assert "msg=" not in d.log()  # nothing went to stderr as logfmt


def test_journal_target_without_a_journal_falls_back_to_stderr(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, config_overrides={"logging": {"target": "journal"}},
                      env={"SDD_JOURNAL_SOCKET": str(tmp_path / "absent.sock")})
    with d:
        pass
    assert "does not exist; logging to stderr" in d.log() and 'msg="sdd ready"' in d.log()


@pytest.fixture
def real_journald() -> Iterator[tuple[str, str]]:
    if not os.access(JOURNALD, os.X_OK) or shutil.which("journalctl") is None or os.geteuid() != 0:
        pytest.skip("systemd-journald/journalctl not available, or not root")
    namespace = f"sddtest{uuid.uuid4().hex[:8]}"
    run_dir = Path(f"/run/systemd/journal.{namespace}")
    proc = subprocess.Popen([JOURNALD, namespace], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not (run_dir / "socket").is_socket():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"systemd-journald does not run here: {proc.communicate()[0][-500:]!r}")
            time.sleep(0.05)
        yield namespace, str(run_dir / "socket")
    finally:
        proc.terminate()
        proc.wait(10)
        machine = Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else ""
        for leftover in (run_dir, Path(f"/var/log/journal/{machine}.{namespace}"),
                         Path(f"/run/log/journal/{machine}.{namespace}")):
            shutil.rmtree(leftover, ignore_errors=True)


def test_a_real_journald_keeps_sdds_fields(tmp_path: Path, real_journald: tuple[str, str]) -> None:
    namespace, path = real_journald
    d = DaemonProcess(tmp_path, workflows={"contain": CONTAIN}, config_overrides={"logging": {"target": "journal"}},
                      env={"SDD_JOURNAL_SOCKET": path})
    run_finished = journal.MESSAGE_IDS[LogEvent.RUN_FINISHED]

    def entries() -> list[dict[str, Any]]:
        out = subprocess.run(["journalctl", f"--namespace={namespace}", "-o", "json", "--no-pager",
                              f"MESSAGE_ID={run_finished}"], check=False, capture_output=True, text=True,
                             timeout=30).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]
    with d:
        evil = d.root / "evil.exe"
        evil.write_bytes(b"MZ")
        d.drop({"type": "malware", "file_path": str(evil)})
        found = d.wait_for(entries, 30, interval=0.2, what="run.finished in the real journal")
    entry = found[0]
    assert entry["SYSLOG_IDENTIFIER"] == "sdd" and entry["SDD_WORKFLOW"] == "contain"
    assert entry["_TRANSPORT"] == "journal" and entry["_PID"] == str(d.pid)
    assert entry["SDD_STATUS"] in ("completed", "failed") and len(entry["SDD_RUN_ID"]) == 32
