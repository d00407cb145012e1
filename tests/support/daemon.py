"""A real sdd daemon for tests: `DaemonProcess(tmp_path, workflows=..., config_overrides=...)`.

Writes a config whose every path is under a temporary directory (D-Bus off unless asked for), starts `sdd`
as a subprocess with a private `NOTIFY_SOCKET`, waits for `READY=1` (with a deadline, failing with the
daemon's log if it exits or never gets ready), and at the end sends SIGTERM and waits for it. Helpers drop
detections Maildir-style (write in tmp/, rename into new/) and read the database read-only with a deadline.

    with DaemonProcess(tmp_path, workflows={"wf": WORKFLOW_YAML}) as d:
        d.drop({"type": "malware", "file_path": "/tmp/x"})
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status='completed'") == 1)

A `daemon` pytest fixture built on it is in `tests/daemon/conftest.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.trusted import trusted_dir

DEFAULT_START_TIMEOUT = 60.0


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Path):
        return json.dumps(str(value))
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(config: Mapping[str, Mapping[str, Any]]) -> str:
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def sdd_command() -> list[str]:
    script = Path(sys.executable).parent / "sdd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from sdd.main import main; sys.exit(main())"]


class DaemonError(AssertionError):
    pass


class DaemonProcess:
    """One sdd subprocess in its own directories. Restartable: `start()` again after `stop()`/`kill()`."""

    def __init__(self, tmp_path: Path, workflows: Mapping[str, str | Mapping[str, Any]] | None = None,
                 config_overrides: Mapping[str, Mapping[str, Any]] | None = None, *, user_mode: bool = True,
                 env: Mapping[str, str] | None = None, start_timeout: float = DEFAULT_START_TIMEOUT,
                 scripts: Mapping[str, str] | None = None) -> None:
        self.root = Path(tmp_path) / "sdd"
        # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
        self.runtime = Path(tempfile.mkdtemp(prefix="sddt-", dir="/tmp"))
        self.spool = self.root / "spool"
        self.state = self.root / "state"
        self.workflows_dir = self.root / "workflows"
        self.scripts_dir = self.root / "scripts"
        if not user_mode and os.geteuid() == 0:
            # System mode runs workflows and scripts only from paths that are root's all the way from /.
            self.workflows_dir, self.scripts_dir = trusted_dir("workflows"), trusted_dir("scripts")
        self.socket = self.runtime / "sdd.sock"
        self.config_file = self.root / "sdd.toml"
        self.log_file = self.root / "daemon.log"
        self.database = self.state / "sdd.db"
        self.user_mode = user_mode
        self.start_timeout = start_timeout
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify_lines: list[str] = []
        self._notify: socket.socket | None = None
        self._notify_cond = threading.Condition()
        self._notify_thread: threading.Thread | None = None
        for d in (self.root, self.workflows_dir, self.scripts_dir, self.spool, self.state):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state, 0o700)
        for name, text in (workflows or {}).items():
            self.write_workflow(name, text)
        for name, text in (scripts or {}).items():
            self.write_script(name, text)
        config: dict[str, dict[str, Any]] = {
            "paths": {"spool": str(self.spool), "state": str(self.state), "socket": str(self.socket),
                      "workflows": [str(self.workflows_dir)]},
            "dbus": {"bus": "none"},
            "engine": {"shutdown_grace": 10.0},
            # daemon_user "": one process, as before; tests/executor run the two-process system mode.
            "actions": {"allowed_roots": [str(self.root), "/tmp"], "scripts_dir": str(self.scripts_dir),
                        "daemon_user": ""},
        }
        for section, values in (config_overrides or {}).items():
            config.setdefault(section, {}).update(values)
        self.config = config
        self.config_file.write_text(to_toml(config), encoding="utf-8")

    # ---- files
    def write_workflow(self, name: str, text: str | Mapping[str, Any]) -> Path:
        body = text if isinstance(text, str) else yaml.safe_dump(dict(text), sort_keys=False)
        path = self.workflows_dir / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
        path.write_text(body, encoding="utf-8")
        os.chmod(path, 0o644)
        return path

    def write_script(self, name: str, text: str) -> Path:
        path = self.scripts_dir / name
        path.write_text(text, encoding="utf-8")
        os.chmod(path, 0o755)
        return path

    def drop(self, detection: Mapping[str, Any] | bytes | str, name: str | None = None) -> str:
        """Writes a detection Maildir-style: into tmp/, then rename(2) into new/. Returns the file name."""
        name = name or f"{time.time_ns()}.{uuid.uuid4().hex[:12]}.test"
        data = detection if isinstance(detection, bytes) else (
            detection.encode() if isinstance(detection, str) else json.dumps(detection).encode())
        (self.spool / "tmp").mkdir(parents=True, exist_ok=True)
        (self.spool / "new").mkdir(parents=True, exist_ok=True)
        tmp = self.spool / "tmp" / name
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, self.spool / "new" / name)
        return name

    # ---- process
    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """The CPU time (user + system) the daemon's process has used so far."""
        with open(f"/proc/{self.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def answers_during(self, method: str, timeout: float = 120.0, **params: Any) -> Any:
        """Calls `method` (work that keeps the daemon busy for a while) on a connection of its own, in a thread;
        once the daemon has spent 0.3 s of CPU on it, five `status` calls on another connection must be answered
        before it replies: with that work on the event loop, the first status came after it, and by the last
        its reply had been read too. Returns its reply."""
        from sdd_client.client import Client

        done: dict[str, Any] = {}

        def call() -> None:
            with Client(self.socket, timeout=timeout) as other:
                done["reply"] = other.call(method, **params)

        with self.client() as client:
            before = self.cpu_seconds()
            worker = threading.Thread(target=call)
            worker.start()
            try:
                deadline = time.monotonic() + 60
                while self.cpu_seconds() < before + 0.3:  # the idle daemon is at work on the call
                    assert time.monotonic() < deadline and worker.is_alive(), f"{method} never kept the daemon busy"
                    time.sleep(0.01)
                answered = [client.call("status")["state"] for _ in range(5)]
                assert "reply" not in done and answered == ["running"] * 5, f"status waited for {method}"
            finally:
                worker.join(timeout)
        return done["reply"]

    def start(self, wait_ready: bool = True) -> DaemonProcess:
        if self.proc is not None and self.proc.poll() is None:
            raise DaemonError("already running")
        self.runtime.mkdir(mode=0o700, exist_ok=True)  # close() removed it; a restart makes it again
        notify_path = self.runtime / "notify.sock"
        if notify_path.exists():
            notify_path.unlink()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        self.notify_lines = []
        self._notify_thread = threading.Thread(target=self._read_notify, args=(self._notify,), daemon=True)
        self._notify_thread.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SDD_", "NOTIFY_", "WATCHDOG_", "LISTEN_"))}
        env.update({"NOTIFY_SOCKET": str(notify_path), "XDG_RUNTIME_DIR": str(self.runtime),
                    "PYTHONUNBUFFERED": "1"})
        env.update(self.extra_env)
        argv = sdd_command() + ["--config", str(self.config_file)] + (["--user"] if self.user_mode else [])
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                         start_new_session=True)
        if wait_ready:
            self.wait_notify("READY=1", self.start_timeout)
        return self

    def start_dropping(self) -> DaemonProcess:
        """Starts a daemon that drops to another user (system mode, started as root) and waits for its READY=1:
        the private notify socket is made writable by that user. Closed again if it never comes."""
        old = os.umask(0o011)
        try:
            self.start(wait_ready=False)
        finally:
            os.umask(old)
        try:
            self.wait_notify("READY=1", self.start_timeout)
        except BaseException:
            self.close()
            raise
        return self

    def wait_notify(self, line: str, timeout: float) -> list[str]:
        """Waits for a datagram containing `line` on the private NOTIFY_SOCKET."""
        return self.wait_notify_message(lambda msg: line in msg.splitlines(), timeout, line)

    def wait_notify_message(self, predicate: Callable[[str], bool], timeout: float,
                            what: str = "notify message") -> list[str]:
        """Waits for a datagram (all of its lines as one string) that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        with self._notify_cond:
            while True:
                if any(predicate(msg) for msg in self.notify_lines):
                    return list(self.notify_lines)
                if self.proc is not None and self.proc.poll() is not None:
                    raise DaemonError(f"sdd exited with {self.proc.returncode} before {what}:\n{self.log()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DaemonError(f"no {what} within {timeout}s (got {self.notify_lines}):\n{self.log()}")
                # Woken by each datagram; the short bound only notices a daemon that died meanwhile.
                self._notify_cond.wait(min(remaining, 0.5))

    def _read_notify(self, sock: socket.socket) -> None:
        """Drains the notify socket all the time: its queue holds ~10 datagrams, and sd_notify senders drop
        messages (sdd does) rather than block when it is full."""
        sock.settimeout(0.5)
        while self._notify is sock:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data and self._notify is not sock:
                return  # shut down by _close_notify
            with self._notify_cond:
                self.notify_lines.append(data.decode("utf-8", "replace"))
                self._notify_cond.notify_all()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise DaemonError(f"sdd did not stop within {timeout}s of SIGTERM:\n{self.log()}")
        rc = self.proc.returncode
        self._close_notify()
        return rc

    def kill(self) -> None:
        """kill -9, as a crash or power loss would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_notify()

    def _close_notify(self) -> None:
        if self._notify is not None:
            sock, self._notify = self._notify, None
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv at once
            except OSError:
                pass
            if self._notify_thread is not None:
                self._notify_thread.join(5)
            sock.close()

    def client(self) -> Any:
        """A connected `sdd_client.client.Client` on this daemon's socket (close it, or use `with`)."""
        from sdd_client.client import Client

        return Client(self.socket)

    def log(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")[-20000:]
        except FileNotFoundError:
            return ""

    def __enter__(self) -> DaemonProcess:  # noqa: PYI034 -- subclasses are not expected
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    self.stop()
                except DaemonError:
                    pass
        finally:
            self._close_notify()
            shutil.rmtree(self.runtime, ignore_errors=True)

    # ---- the database, read-only
    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        return conn

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        conn = self.db()
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def count(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        rows = self.query(sql, args)
        return int(rows[0][0]) if rows else 0

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05,
                 what: str = "condition") -> Any:
        """Polls `predicate` until it returns something truthy, failing after `timeout` with the log."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = predicate()
            except sqlite3.OperationalError:  # database not created yet, or busy
                value = None
            if value:
                return value
            if self.proc is not None and self.proc.poll() is not None:
                raise DaemonError(f"sdd exited with {self.proc.returncode} while waiting for {what}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise DaemonError(f"timed out after {timeout}s waiting for {what}:\n{self.log()}")
            time.sleep(interval)

    def spool_files(self, sub: str) -> list[str]:
        try:
            return sorted(os.listdir(self.spool / sub))
        except FileNotFoundError:
            return []


@pytest.fixture
def make_daemon(tmp_path: Path) -> Any:
    """A factory fixture: `d = make_daemon(workflows=..., config_overrides=...)` returns a started daemon;
    every daemon it made is stopped (SIGTERM) at teardown. Import it into a conftest to use it."""
    made: list[DaemonProcess] = []

    def make(**kwargs: Any) -> DaemonProcess:
        d = DaemonProcess(tmp_path / f"daemon{len(made)}", **kwargs)
        made.append(d)
        return d.start()

    yield make
    for d in made:
        d.close()
