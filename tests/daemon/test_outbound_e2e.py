"""A mail relay that never answers does not hold up containment: through the real daemon, the shipped
`critical_threat_response`, an outbreak of more files than `max_concurrent_runs` and a relay that accepts
connections and says nothing. Every file is in the vault, and gone from disk, before the relay's first
session has even timed out. Before: the runs that reached their email step kept their slots (and six
threads of the pool that local work shares) for the relay's timeout, and the other files waited."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from tests.support.daemon import DaemonProcess

TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "critical_threat_response.yaml"
RUNS = 4           # engine.max_concurrent_runs
FILES = 4 * RUNS   # more than the slots, fewer than their bound while waiting on the relay
RELAY_TIMEOUT = 60.0


def _smtp_failures(d: DaemonProcess) -> int:
    with d.client() as c:
        breakers: dict[str, Any] = c.call("status")["guards"]["breakers"]
    return sum(b["consecutive_failures"] for key, b in breakers.items() if key.startswith("smtp:"))


def test_an_outbreak_is_contained_while_the_mail_relay_says_nothing(tmp_path: Path) -> None:
    relay = socket.socket()
    relay.bind(("127.0.0.1", 0))
    relay.listen(FILES * 4)  # connections complete in the backlog; nothing is ever accepted or said
    home = tmp_path / "home"
    home.mkdir()
    files = [home / f"outbreak-{i}.exe" for i in range(FILES)]
    d = DaemonProcess(tmp_path / "d", workflows={"critical_threat_response": TEMPLATE.read_text("utf-8")},
                      config_overrides={"engine": {"max_concurrent_runs": RUNS},
                                        "actions": {"allowed_roots": [str(home)],
                                                    "smtp": {"host": "127.0.0.1", "port": relay.getsockname()[1],
                                                             "from": "sdd@localhost", "timeout": RELAY_TIMEOUT}}})
    try:
        d.start()
        for i, f in enumerate(files):
            f.write_bytes(b"EVIL %d" % i)
            d.drop({"type": "malware", "severity": "critical", "file_path": str(f), "threat_name": "Test.Sig"})
        d.wait_for(lambda: d.count("SELECT count(*) FROM quarantine") == FILES, timeout=RELAY_TIMEOUT / 2,
                   what="every file in the vault")
        assert _smtp_failures(d) == 0  # the relay has not failed a single mail yet: nothing waited for it
        assert [f for f in files if f.exists()] == []
        with d.client() as c:
            assert c.call("status")["active_runs"] > RUNS  # the runs waiting on the relay let theirs go
        relay.close()  # the connections waiting in its backlog are reset: the mail steps fail now
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'completed'") == FILES, timeout=120,
                   what="every run completed, its mail failed")
        assert d.count("SELECT count(*) FROM steps WHERE step_id = 'notify_admin' AND status = 'failed'") == FILES
    finally:
        relay.close()
        d.close()


def test_a_mail_session_to_a_silent_relay_does_not_hold_up_the_daemon_s_stop(tmp_path: Path) -> None:
    # The sessions ran in a thread pool, whose threads the interpreter joins at exit: the stop waited for the
    # relay's timeout (here an hour), past systemd's TimeoutStopSec (45 s), whatever `shutdown_grace` said.
    relay = socket.socket()
    relay.bind(("127.0.0.1", 0))
    relay.listen(16)
    home = tmp_path / "home"
    home.mkdir()
    d = DaemonProcess(tmp_path / "d", workflows={"critical_threat_response": TEMPLATE.read_text("utf-8")},
                      config_overrides={"engine": {"shutdown_grace": 1.0},
                                        "actions": {"allowed_roots": [str(home)],
                                                    "smtp": {"host": "127.0.0.1", "port": relay.getsockname()[1],
                                                             "from": "sdd@localhost", "timeout": 3600}}})
    try:
        d.start()
        for i in range(3):
            (home / f"e{i}.exe").write_bytes(b"EVIL %d" % i)
            d.drop({"type": "malware", "severity": "critical", "file_path": str(home / f"e{i}.exe")})
        d.wait_for(lambda: d.count("SELECT count(*) FROM quarantine") == 3, what="the files in the vault")
        d.wait_for(lambda: len(_peers(relay)) == 3, what="three sessions open at the relay")
        assert d.proc is not None
        d.proc.terminate()
        assert d.proc.wait(timeout=60) == 0
        assert dict(d.query("SELECT status, count(*) FROM runs GROUP BY status")) == {"interrupted": 3}
    finally:
        d.close()
        relay.close()


def _peers(relay: socket.socket) -> list[str]:
    """The connections waiting in the relay's backlog (ESTABLISHED to its port, from /proc/net/tcp)."""
    port = f"{relay.getsockname()[1]:04X}"
    with open("/proc/net/tcp", encoding="ascii") as fh:
        rows = [line.split() for line in fh.readlines()[1:]]
    return [r[2] for r in rows if r[1].endswith(f":{port}") and r[3] == "01"]
