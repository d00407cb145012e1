"""`run_scan` on the root side: scanners run without a shell, and findings that name real files exactly.

`run_scan` never hands a scanner a path. It walks the tree itself, inside `[actions] allowed_roots`, from a
descriptor pinned without following any symlink (symlinks are neither followed nor scanned, FIFOs and
devices never opened), opens each regular file and gives the scanner the open descriptor:

- `clamdscan` (the default): sdd talks to clamd itself (`clamd.py`), one verdict per descriptor;
- `clamscan` or any other argv: run on batches of `/proc/self/fd/N` names of descriptors it inherits, and only
  output lines naming exactly those are read (anything else saying FOUND is refused as ambiguous).

- `engine: yara`: the rules of `[actions] yara_rules` matched on each descriptor's contents (`yara_scan.py`).

So each finding is the path the walk opened, character for character, newlines included: a file called
`x\\n/home/victim/clean.txt: Eicar FOUND` is reported as that one file, never as another.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import re
import stat
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .abortable import Abort, run_abortable
from .clamd import Session, Verdict, clamd_conf, local_socket
from .errors import Forbidden, InvalidRequest, NotFound, PrimitiveError
from .paths import checked_abs_path
from .policy import Policy
from .protocol import Scan
from .safepath import describe_type, lstat_at, open_parent
from .subproc import run_argv

MAX_FINDINGS = 10_000
MAX_ERRORS = 100
MAX_DEPTH = 256
# A scan's walk and its clamd session run in a thread of their own, never one of asyncio's default pool that the
# other primitives share: a clamd that hangs held a pool thread per scan, and six of them stopped every
# quarantine (`threads`). How many scans go at once is the daemon's to bound (`actions.lending.Lane`).
SCAN_THREAD = "sdd-scan"
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_FD_LINE = re.compile(r"/proc/self/fd/(\d+): (.*) (FOUND|ERROR)")


def within_roots(path: str, roots: Any) -> bool:
    """A normalised absolute path that is one of the roots or lies inside one (lexically; the walk refuses
    symlinks, so the lexical answer is the real one)."""
    for root in roots:
        r = os.path.normpath(os.fspath(root))
        if path == r or path.startswith(r.rstrip("/") + "/"):
            return True
    return False


@dataclass
class Tally:
    """What a scan found, bounded; every `file` is a path the walk opened."""

    findings: list[dict[str, str]] = field(default_factory=list)
    undecodable: list[dict[str, str]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    threats: int = 0
    error_count: int = 0
    scanned: int = 0
    symlinks: int = 0
    special: int = 0

    def verdict(self, v: Verdict) -> None:
        """One of clamd's verdicts, for the file whose path is its key."""
        if v.status == "ERROR":
            self.error(str(v.key), v.detail)
            return
        self.scanned += 1
        if v.status == "FOUND":
            self.found(str(v.key), v.detail)

    def found(self, path: str, signature: str, **more: Any) -> None:
        self.threats += 1
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            # Not UTF-8 (raw bytes in a name): it cannot travel as an exact string, so it is listed apart.
            if len(self.undecodable) < MAX_FINDINGS:
                self.undecodable.append({"file_escaped": ascii(path), "signature": signature, **more})
            return
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append({"file": path, "signature": signature, **more})

    def error(self, path: str, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"file": path if _utf8(path) else ascii(path), "error": message})


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def walk(root: str, abort: Abort, tally: Tally) -> Generator[tuple[str, int], None, None]:
    """(path, descriptor) for every regular file at or under `root`, never following a symlink. Each
    descriptor is the caller's to close; directory descriptors are closed here."""
    with open_parent(root, what="run_scan") as parent:
        st = lstat_at(parent)
        if st is None:
            raise NotFound(f"run_scan: {root} does not exist")
        if stat.S_ISREG(st.st_mode):
            fd = _open_file(parent.fd, parent.name, root, tally)
            if fd is not None:
                yield root, fd
            return
        if not stat.S_ISDIR(st.st_mode):
            raise Forbidden(f"run_scan: {root} is {describe_type(st.st_mode)}; only files and directories are "
                            f"scanned")
        top = os.open(parent.name, _DIR, dir_fd=parent.fd)
    stack = [(root, top, 0)]
    try:
        while stack:
            dirpath, dfd, depth = stack.pop()
            try:
                with os.scandir(dfd) as entries:
                    names = [(e.name, e.is_symlink(), e.is_dir(follow_symlinks=False),
                              e.is_file(follow_symlinks=False)) for e in entries]
            except OSError as exc:
                tally.error(dirpath, f"cannot list: {exc.strerror}")
                os.close(dfd)
                continue
            try:
                for name, is_link, is_dir, is_file in sorted(names):
                    abort.check()
                    path = f"{dirpath.rstrip('/')}/{name}"
                    if is_link:
                        tally.symlinks += 1
                    elif is_dir:
                        if depth + 1 >= MAX_DEPTH:
                            tally.error(path, f"deeper than {MAX_DEPTH} directories; not scanned")
                            continue
                        try:
                            stack.append((path, os.open(name, _DIR, dir_fd=dfd), depth + 1))
                        except OSError as exc:
                            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                                tally.symlinks += 1  # swapped for a symlink since the listing: not followed
                            elif exc.errno != errno.ENOENT:
                                tally.error(path, f"cannot open: {exc.strerror}")
                    elif is_file:
                        fd = _open_file(dfd, name, path, tally)
                        if fd is not None:
                            yield path, fd
                    else:
                        tally.special += 1
            finally:
                os.close(dfd)
    finally:
        for _, dfd, _ in stack:
            os.close(dfd)


def _open_file(dir_fd: int, name: str, path: str, tally: Tally) -> int | None:
    try:
        fd = os.open(name, _FILE, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            tally.symlinks += 1  # became a symlink since the listing: not followed
        elif exc.errno != errno.ENOENT:
            tally.error(path, f"cannot open: {exc.strerror}")
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        tally.special += 1  # became something else since the listing: never read
        return None
    return fd


# -- clamd -------------------------------------------------------------------------------------------------

def _scan_clamd(sock_path: str, root: str, abort: Abort, tally: Tally) -> None:
    session = Session(sock_path, tally.verdict, abort.check)
    try:
        for path, fd in walk(root, abort, tally):
            try:
                session.submit(path, fd)
            finally:
                os.close(fd)
        session.finish()
    finally:
        session.close()


# -- clamscan and other programs ---------------------------------------------------------------------------

def _batch_size() -> int:
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(4096, soft // 2 - 64))


def _next_batch(files: Iterator[tuple[str, int]], n: int) -> list[tuple[str, int]]:
    batch: list[tuple[str, int]] = []
    try:
        for item in files:
            batch.append(item)
            if len(batch) >= n:
                break
    except BaseException:
        for _, fd in batch:
            os.close(fd)
        raise
    return batch


async def _scan_program(argv: list[str], root: str, tally: Tally, timeout: float) -> int:
    """Run the program on batches of inherited descriptors; returns the worst exit status (0, 1 or 2)."""
    abort = Abort()
    files = walk(root, abort, tally)
    worst = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    size = _batch_size()
    try:
        while True:
            batch = (await run_abortable(lambda _: _next_batch(files, size), abort, own_thread=SCAN_THREAD)).value
            if not batch:
                return worst
            by_fd = {fd: path for path, fd in batch}
            errored: set[int] = set()
            try:
                done = await run_argv([*argv, *(f"/proc/self/fd/{fd}" for fd in by_fd)],
                                      timeout=max(1.0, deadline - loop.time()), head_limit=0,
                                      pass_fds=tuple(by_fd), what="run_scan",
                                      on_stdout_line=functools.partial(_program_line, by_fd=by_fd, errored=errored,
                                                                       tally=tally))
            finally:
                for fd in by_fd:
                    os.close(fd)
            failed = done.returncode not in (0, 1, 2) or (done.returncode == 2 and not errored)
            if failed:
                raise PrimitiveError(f"run_scan: {argv[0]} exited with status {done.returncode}: "
                                  f"{(done.stderr_tail or done.stdout_tail).strip()[-500:]}")
            tally.scanned += len(batch) - len(errored)
            worst = max(worst, done.returncode)
    finally:
        await asyncio.to_thread(files.close)  # closes the directories the walk still holds


def _program_line(line: str, by_fd: dict[int, str], errored: set[int], tally: Tally) -> None:
    m = _FD_LINE.fullmatch(line.rstrip("\r"))
    if m is not None and int(m.group(1)) in by_fd:
        fd = int(m.group(1))
        if m.group(3) == "FOUND":
            tally.found(by_fd[fd], m.group(2))
        else:
            errored.add(fd)
            tally.error(by_fd[fd], m.group(2))
        return
    if "FOUND" in line or "ERROR" in line:
        raise PrimitiveError(f"run_scan: the scanner printed {line[:200]!r}, which names none of the files it was "
                          f"given; refusing to guess what it means", retryable=False)


def scanner_argv(configured: tuple[str, ...]) -> list[str]:
    """The scan command for a program: the configured argv plus what clamscan needs (findings only)."""
    argv = list(configured)
    if os.path.basename(argv[0]) == "clamscan" and not any(a in ("-i", "--infected") for a in argv):
        argv.append("--infected")
    return argv


# -- the primitive ----------------------------------------------------------------------------------------

async def scan(policy: Policy, req: Scan, before_act: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    """Walk `req.path` (inside the executor's roots) and scan what it opens: clamd by descriptor, another
    program on inherited descriptors, or YARA on their contents. The tally, plain data."""
    path = checked_abs_path(req.path, lambda n, m: InvalidRequest(f"run_scan: {n} {m}"), "path")
    if not within_roots(path, policy.allowed_roots):
        roots = ", ".join(policy.allowed_roots) or "(none configured)"
        raise Forbidden(f"run_scan: {path} is outside the allowed roots ({roots})")
    configured = policy.scanner
    tally = Tally()
    exit_code: int | None = None
    more: dict[str, Any] = {}
    try:
        async with asyncio.timeout(req.timeout):
            if req.engine == "yara":
                from .yara_scan import check_max_file_size, scan_yara  # yara-python is an optional extra
                scanner, more = await scan_yara(policy.yara_rules, policy.user_mode, path, tally,
                                                check_max_file_size(req.max_file_size), req.timeout)
            elif os.path.basename(configured[0]) == "clamdscan":
                sock = local_socket(clamd_conf(configured))
                scanner = f"clamd:{sock}"
                await run_abortable(lambda abort: _scan_clamd(sock, path, abort, tally), own_thread=SCAN_THREAD)
            else:
                argv = scanner_argv(configured)
                scanner = argv[0]
                exit_code = await _scan_program(argv, path, tally, req.timeout)
    except TimeoutError:
        raise PrimitiveError(f"run_scan: timed out after {req.timeout:g} s ({tally.scanned} files scanned, "
                             f"{tally.threats} threat(s) found so far)") from None
    return {"path": path, "scanner": scanner, "exit_code": exit_code, "tally": asdict(tally), "more": more}
