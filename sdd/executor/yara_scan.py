"""`run_scan` with `engine: yara`: the YARA rules of `[actions] yara_rules` matched by yara-python against
the files the scanner's walk opened — by their contents, read through the walk's descriptor, never by a
path opened again.

The rules: every `*.yar` / `*.yara` file directly in the directory, each compiled as its own namespace (the
file name without its suffix), `include` disabled. In system mode (not `--user`) the directory and
every component above it must be root's and writable by no one else (`sdd.engine.path_problem`, as for
`scripts_dir`), and so must each rule file: a rule decides what root quarantines. A symbolic link among the
rule files, a file that is not UTF-8 or one that does not compile fails the step, naming it; nothing is
skipped silently. The compiled set is kept until a rule file's contents change (keyed by their SHA-256), so
a scan costs reading the rule files, not compiling them.

The walk is `scanner.walk()`: inside the allowed roots, no symlink followed or scanned, FIFOs and devices
never opened. Each regular file is read with `pread` from the descriptor the walk opened (never mmap: a file
truncated by its owner during the match would raise SIGBUS in the daemon) up to `max_file_size`; a larger
file is skipped and counted. Bounds: the step's `timeout`, a per-file match timeout (`FILE_TIMEOUT`, at most
what the step has left), and at most `MAX_RULES_PER_FILE` matching rules reported per file (the match stops
there). A finding is `{file, signature, namespace, rules, tags}`: `signature` the first matching rule's
name, `rules` every matching rule as `namespace:rule`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .abortable import Abort, run_abortable
from .errors import Forbidden, InvalidRequest, NotFound, PrimitiveError
from .safepath import not_root_owned
from .scan import SCAN_THREAD

RULE_SUFFIXES = (".yar", ".yara")
MAX_RULE_FILES = 1000
MAX_RULE_BYTES = 64 * 1024 * 1024       # all rule files together
DEFAULT_MAX_FILE_SIZE = 64 * 1024 * 1024
MAX_FILE_SIZE = 1024 * 1024 * 1024      # the most a step may ask for: one file is held in memory while matched
FILE_TIMEOUT = 60                       # seconds one file's match may take (yara's own timeout)
MAX_RULES_PER_FILE = 64
_READ = 1 << 20
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_RULE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
INSTALL_HINT = ("the yara engine needs yara-python: install Debian's python3-yara, or pip install 'sdd[yara]'")


@dataclass(frozen=True)
class RuleSet:
    """A compiled set of rules and where it came from."""

    rules: Any              # yara.Rules
    directory: str
    files: tuple[str, ...]
    sha256: str


_compiled: dict[str, RuleSet] = {}
_compile_lock = threading.Lock()


def _yara() -> Any:
    try:
        import yara
    except ImportError:
        raise PrimitiveError(f"run_scan: {INSTALL_HINT}", retryable=False) from None
    return yara


def rules_dir_problem(directory: Path | str, *, user_mode: bool) -> str | None:
    """Why the rules directory may not be used, or None: in system mode it must be root's all the way from /
    (as scripts_dir must, whoever runs the scan). The daemon's handler checks it first, with the engine's
    `path_problem` (symlinks and their directories too); this is the executor's own check of the resolved
    directory. In user mode there is no boundary, and the handler's check (the user may own it) is the one."""
    if user_mode:
        return None
    if not os.path.lexists(directory):
        return f"{directory} does not exist"
    return not_root_owned(os.path.realpath(directory))


def _trusted_owners(user_mode: bool) -> set[int]:
    return {0, os.geteuid()} if user_mode else {0}


def read_rule_files(directory: Path | str, *, user_mode: bool) -> list[tuple[str, bytes]]:
    """(file name, contents) of every rule file, sorted; raises naming the first file that may not be used."""
    where = os.fspath(directory)
    reason = rules_dir_problem(where, user_mode=user_mode)
    if reason is not None:
        if not os.path.lexists(where):
            raise NotFound(f"run_scan: the YARA rules directory {where} does not exist ([actions] yara_rules)")
        raise Forbidden(f"run_scan: the YARA rules directory is refused: {reason} (its rules decide what is "
                        f"quarantined, so they must be root's)")
    owners = _trusted_owners(user_mode)
    try:
        dfd = os.open(os.path.realpath(where), _DIR)
    except OSError as exc:
        raise NotFound(f"run_scan: cannot open the YARA rules directory {where}: {exc.strerror}") from None
    out: list[tuple[str, bytes]] = []
    total = 0
    try:
        names = sorted(n for n in os.listdir(dfd) if n.endswith(RULE_SUFFIXES) and not n.startswith("."))
        if len(names) > MAX_RULE_FILES:
            raise PrimitiveError(f"run_scan: {where} holds {len(names)} rule files; at most {MAX_RULE_FILES}",
                              retryable=False)
        for name in names:
            data = _read_rule(dfd, where, name, owners, MAX_RULE_BYTES - total)
            total += len(data)
            out.append((name, data))
    finally:
        os.close(dfd)
    if not out:
        raise NotFound(f"run_scan: no YARA rule files (*.yar, *.yara) in {where}")
    return out


def _read_rule(dfd: int, where: str, name: str, owners: set[int], budget: int) -> bytes:
    path = os.path.join(where, name)
    try:
        fd = os.open(name, _RULE, dir_fd=dfd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Forbidden(f"run_scan: the YARA rule file {path} is a symbolic link; rule files must be regular "
                            f"files in yara_rules") from None
        raise PrimitiveError(f"run_scan: cannot open the YARA rule file {path}: {exc.strerror}",
                          retryable=False) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Forbidden(f"run_scan: the YARA rule file {path} is not a regular file")
        if st.st_uid not in owners or st.st_mode & 0o022:
            raise Forbidden(f"run_scan: the YARA rule file {path} is owned by uid {st.st_uid} with mode "
                            f"{stat.S_IMODE(st.st_mode):04o}; it must be root's and not writable by group or "
                            f"others")
        chunks, size = [], 0
        while chunk := os.read(fd, _READ):
            size += len(chunk)
            if size > budget:
                raise PrimitiveError(f"run_scan: the YARA rules in {where} exceed {MAX_RULE_BYTES} bytes",
                                  retryable=False)
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def namespace_of(name: str) -> str:
    for suffix in RULE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def compiled_rules(directory: Path | str, *, user_mode: bool) -> RuleSet:
    """The directory's rules, compiled once per change of their contents."""
    yara = _yara()
    where = os.fspath(directory)
    files = read_rule_files(where, user_mode=user_mode)
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(f"{len(name)}:{name}:{len(data)}:".encode("utf-8", "surrogateescape"))
        digest.update(data)
    key = digest.hexdigest()
    with _compile_lock:
        known = _compiled.get(where)
        if known is not None and known.sha256 == key:
            return known
        sources: dict[str, str] = {}
        for name, data in files:
            namespace = namespace_of(name)
            if namespace in sources:
                raise PrimitiveError(f"run_scan: {where} has two rule files for namespace {namespace!r} "
                                  f"({namespace}.yar and {namespace}.yara)", retryable=False)
            try:
                sources[namespace] = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PrimitiveError(f"run_scan: the YARA rule file {os.path.join(where, name)} is not UTF-8 "
                                  f"(byte {exc.start})", retryable=False) from None
        try:
            rules = yara.compile(sources=sources, includes=False)
        except yara.SyntaxError as exc:
            # yara names the line; the namespace tells which file (sources carry no file names).
            raise PrimitiveError(f"run_scan: the YARA rules in {where} do not compile: {exc}",
                              retryable=False) from None
        except yara.Error as exc:
            raise PrimitiveError(f"run_scan: the YARA rules in {where} cannot be used: {exc}", retryable=False) from None
        found = RuleSet(rules, where, tuple(name for name, _ in files), key)
        _compiled[where] = found
        return found


def read_whole(fd: int, limit: int) -> bytes | None:
    """The file's bytes through its descriptor, or None when it holds more than `limit` (it may grow while
    read: what counts is what was read)."""
    chunks: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, min(_READ, limit + 1 - offset), offset)
        if not chunk:
            return b"".join(chunks)
        offset += len(chunk)
        if offset > limit:
            return None
        chunks.append(chunk)


def _scan(ruleset: RuleSet, root: str, abort: Abort, tally: Any, max_size: int, deadline: float) -> int:
    """Walk and match; returns how many files were skipped as larger than `max_size`."""
    from .scan import walk

    yara = _yara()
    large = 0
    for path, fd in walk(root, abort, tally):
        try:
            if os.fstat(fd).st_size > max_size:
                large += 1
                continue
            data = read_whole(fd, max_size)
            if data is None:
                large += 1
                continue
        except OSError as exc:
            tally.error(path, f"cannot read: {exc.strerror}")
            continue
        finally:
            os.close(fd)
        abort.check()
        seconds = int(max(1, min(FILE_TIMEOUT, deadline - time.monotonic())))
        matched: list[Any] = []

        def on_match(info: dict[str, Any], matched: list[Any] = matched) -> int:
            matched.append(info)
            return yara.CALLBACK_ABORT if len(matched) >= MAX_RULES_PER_FILE else yara.CALLBACK_CONTINUE

        try:
            ruleset.rules.match(data=data, timeout=seconds, callback=on_match,
                                which_callbacks=yara.CALLBACK_MATCHES)
        except yara.TimeoutError:
            tally.error(path, f"YARA: the match took longer than {seconds} s; not decided")
            continue
        except yara.Error as exc:
            tally.error(path, f"YARA: {exc}")
            continue
        tally.scanned += 1
        if matched:
            first = matched[0]
            tally.found(path, str(first["rule"]), namespace=str(first["namespace"]),
                        rules=[f"{m['namespace']}:{m['rule']}" for m in matched],
                        tags=[str(t) for t in first.get("tags") or ()])
    return large


def check_max_file_size(value: int | None) -> int:
    if value is None:
        return DEFAULT_MAX_FILE_SIZE
    if not 1 <= value <= MAX_FILE_SIZE:
        raise InvalidRequest(f"run_scan: max_file_size must be between 1 and {MAX_FILE_SIZE} bytes, got {value}")
    return value


async def scan_yara(yara_rules: str, user_mode: bool, path: str, tally: Any, max_file_size: int,
                    timeout: float) -> tuple[str, dict[str, Any]]:
    """Match `[actions] yara_rules` against every regular file under `path`; fills `tally`. Returns the
    scanner's label and what the result adds for this engine."""
    deadline = time.monotonic() + timeout
    abort = Abort()
    ruleset = (await run_abortable(lambda _: compiled_rules(yara_rules, user_mode=user_mode), abort)).value
    large = (await run_abortable(lambda a: _scan(ruleset, path, a, tally, max_file_size, deadline), abort,
                                 own_thread=SCAN_THREAD)).value
    import yara

    return f"yara-python {yara.__version__}", {
        "rules": {"directory": ruleset.directory, "files": list(ruleset.files), "sha256": ruleset.sha256},
        "max_file_size": max_file_size, "skipped_large": large,
    }


__all__ = ["DEFAULT_MAX_FILE_SIZE", "FILE_TIMEOUT", "MAX_RULES_PER_FILE", "RuleSet", "compiled_rules",
           "read_rule_files", "read_whole", "rules_dir_problem", "scan_yara"]
