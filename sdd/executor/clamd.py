"""A client of clamd's local socket that scans file descriptors: one verdict per descriptor, never a path.

clamd's text replies name what was scanned, and a file name can contain anything (`\\n/home/victim/x: Eicar
FOUND` included), so sdd never lets clamd see a name: it opens each file itself (no symlink followed) and
passes the descriptor (`zFILDES` + SCM_RIGHTS, clamd(8)), inside one `zIDSESSION` with a few requests in
flight. Each reply is `<request id>: fd[<clamd's fd>]: <verdict>`; the request id says which of our files it
is about, so a verdict can only ever be attached to the file that was sent.

Where clamd listens is read from the clamd.conf that clamdscan would use (`-c`/`--config-file` in
`[actions] scanner`, else /etc/clamav/clamd.conf): its `LocalSocket`. fd passing needs a local socket.
"""

from __future__ import annotations

import array
import contextlib
import os
import re
import select
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import PrimitiveError

DEFAULT_CONF = "/etc/clamav/clamd.conf"
WINDOW = 8              # requests in flight: clamd scans them on its threads while we walk the tree
READ_TICK = 0.5         # seconds: how often a wait for clamd looks at the step's abort flag
MAX_REPLY = 64 * 1024
_REPLY = re.compile(rb"(\d+): (.*)", re.DOTALL)


def clamd_conf(argv: Sequence[str]) -> str:
    """The clamd.conf a `clamdscan ...` command line would read."""
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config-file") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config-file="):
            return arg.split("=", 1)[1]
    return DEFAULT_CONF


def local_socket(conf: str) -> str:
    """clamd's `LocalSocket` from its config file."""
    try:
        with open(conf, encoding="utf-8", errors="replace") as fh:
            lines = fh.read(1 << 20).splitlines()
    except OSError as exc:
        raise PrimitiveError(f"run_scan: cannot read clamd's configuration {conf}: {exc.strerror}",
                          retryable=False) from None
    found = None
    for line in lines:
        key, _, value = line.strip().partition(" ")
        if key == "LocalSocket" and value.strip():
            found = value.strip()  # the last one wins, as in clamd
    if found is None:
        raise PrimitiveError(f"run_scan: {conf} sets no LocalSocket; sdd passes file descriptors to clamd, which "
                          f"needs its local socket", retryable=False)
    return found


@dataclass(frozen=True)
class Verdict:
    key: object        # the caller's token for the file (its path)
    status: str        # "OK", "FOUND" or "ERROR"
    detail: str        # the signature name, or clamd's error message


class Session:
    """One zIDSESSION on clamd's socket. `submit(key, fd)` sends a descriptor (the session keeps its own
    duplicate until the verdict is in); verdicts come back through `on_verdict`, in clamd's order."""

    def __init__(self, path: str, on_verdict: Callable[[Verdict], None], check: Callable[[], None]) -> None:
        self.path = path
        self.on_verdict = on_verdict
        self.check = check            # raises when the step is stopped
        self.sock: socket.socket | None = None
        self.next_id = 0
        self.pending: dict[int, tuple[object, int]] = {}
        self.buffer = b""

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(10.0)
        try:
            sock.connect(self.path)
            sock.sendall(b"zIDSESSION\0")
        except OSError as exc:
            sock.close()
            raise PrimitiveError(f"run_scan: cannot reach clamd at {self.path}: {exc.strerror or exc}") from None
        sock.settimeout(READ_TICK)
        self.sock, self.next_id, self.buffer = sock, 0, b""

    def submit(self, key: object, fd: int) -> None:
        while len(self.pending) >= WINDOW:
            self._read_one()
        if self.sock is not None and not self.pending and self._closed_by_clamd():
            self.close()  # clamd ends a session idle for IdleTimeout (a long walk between files): start anew
        if self.sock is None:
            self._connect()
        assert self.sock is not None
        self.next_id += 1
        mine = os.dup(fd)
        self.pending[self.next_id] = (key, mine)
        try:
            self.sock.sendall(b"zFILDES\0")
            self.sock.sendmsg([b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [mine]))])
        except OSError as exc:
            self._lost(f"sending to clamd failed: {exc.strerror or exc}")

    def _closed_by_clamd(self) -> bool:
        assert self.sock is not None
        # With nothing asked, anything readable is an end of session (EOF, or clamd's parting message).
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def finish(self) -> None:
        """Wait for every verdict still owed, then end the session."""
        while self.pending:
            self._read_one()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.sendall(b"zEND\0")
            self.close()

    def close(self) -> None:
        for _, fd in self.pending.values():
            os.close(fd)
        self.pending.clear()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _lost(self, why: str) -> None:
        self.close()
        raise PrimitiveError(f"run_scan: {why}; the scan is incomplete")

    def _read_one(self) -> None:
        assert self.sock is not None
        while b"\0" not in self.buffer:
            self.check()
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                self._lost(f"reading from clamd failed: {exc.strerror or exc}")
            if not data:
                self._lost("clamd closed the session")
            self.buffer += data
            if len(self.buffer) > MAX_REPLY:
                self._lost("clamd sent an oversized reply")
        reply, _, self.buffer = self.buffer.partition(b"\0")
        m = _REPLY.fullmatch(reply)
        if m is None or int(m.group(1)) not in self.pending:
            self._lost(f"clamd replied {reply[:200]!r}, which answers none of the requests sent")
        assert m is not None
        key, fd = self.pending.pop(int(m.group(1)))
        os.close(fd)
        self.on_verdict(_verdict(key, m.group(2)))


def _verdict(key: object, text: bytes) -> Verdict:
    body = text
    if body.startswith(b"fd[") and b"]: " in body:
        body = body.split(b"]: ", 1)[1]
    s = body.decode("utf-8", "replace")
    if s == "OK":
        return Verdict(key, "OK", "")
    if s.endswith(" FOUND"):
        return Verdict(key, "FOUND", s[: -len(" FOUND")])
    if s.endswith(" ERROR"):
        return Verdict(key, "ERROR", s[: -len(" ERROR")][:500])
    return Verdict(key, "ERROR", f"unexpected reply from clamd: {s[:200]}")
