"""`kill_process`: stop the processes a detection is about — and only processes the host shows are linked to it.

A detection's `process_id` is a claim, like its file name; a process's name, `argv[0]` and executable base
name are chosen by whoever started it. So before any signal, including the SIGSTOP that freezes a tree:

1. The number must name a process, not one of its threads (`Tgid` in /proc/PID/status): a signal to a
   thread id reaches the whole process, so a thread id of sdd itself would stop sdd.
2. Never signalled: pid 1, sdd (every pid it runs as), its ancestors, kernel threads; and a process that
   really runs one of `[actions] protected_processes` (see `_protection`).
3. The process must be linked to the evidence: it executes the detected file, holds it open or maps it,
   compared by inode (`procfs.links`). The file's inode comes from this run's quarantine record when the
   file has already been moved into the vault, else from the live file (never following a symlink), else
   from the newest vault record of that path. `trust_process_id: true` on the step skips this check for
   producers that identify processes themselves; `process_start_time` is then required and must match.

With `file_path` and no `process_id`, every process linked to the file is stopped, as `fuser -k` would.
Each target is pinned with a pidfd and its start time checked (pid reuse), so only that very process is
ever signalled: TERM, wait, KILL. A process already gone counts as done.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import stat
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from . import procfs
from .errors import Conflict, Forbidden, InvalidRequest, NotFound, PrimitiveError
from .paths import checked_abs_path, under_roots
from .policy import Policy
from .procfs import FileIdentity, Gone, NotAProcess, Pinned
from .protocol import Kill
from .safepath import describe_type, lstat_at, not_root_owned, open_parent
from .vault import Vault

# create_time counts clock ticks: two processes in different ticks differ by at least one tick, so half a
# tick absorbs float noise (and a producer's rounding to 10 ms) without ever confusing two processes.
START_TIME_TOLERANCE = 0.5 / os.sysconf("SC_CLK_TCK")
# Protected executables protect system accounts' processes (root and uids below Debian's first user id);
# a user who starts a protected program gets no protection from it.
FIRST_USER_UID = 1000
TRUST_HINT = ("a detection's process_id is a claim; set trust_process_id: true on the step for a producer "
              "that identifies processes itself")


class _Never:
    """The processes kill_process never signalled, not even to stop them: pid 1, sdd and its ancestors.

    Built once per set of sdd's pids and reused (`_never`) while it is still true: a process's parent changes
    only when the parent exits (the child is reparented), so while every process of the chains is alive the
    chains are what they were. Each member is pinned with a pidfd when the chain is read; one `poll` of those
    pidfds (no /proc read) tells whether any has exited since, and then the chains are read again."""

    def __init__(self, sdd_pids: frozenset[int]) -> None:
        self.sdd = set(sdd_pids)
        self.pids = {0, 1}
        self._pins: list[Pinned] = []
        self.complete = True   # every member pinned, each parent read while both were alive
        try:
            for pid in self.sdd:
                self.pids |= self._chain(pid)
        except BaseException:
            self.close()
            raise

    def _chain(self, pid: int) -> set[int]:
        """`pid` and its ancestors (as `procfs.ancestors`), each pinned before its parent is read."""
        out: set[int] = set()
        below: Pinned | None = None
        while pid > 1 and pid not in out:
            out.add(pid)
            try:
                pin = Pinned(pid)
            except (Gone, NotAProcess):
                pin = None
            ppid = procfs.parent(pid)
            if pin is None or not pin.alive() or (below is not None and procfs.parent(below.pid) != pid):
                self.complete = False  # it exited (or its child was reparented) while being read: not cached
            if pin is not None:
                self._pins.append(pin)
            if ppid is None:
                break
            below, pid = pin, ppid
        return out

    def current(self) -> bool:
        """Still true: every process of the chains is alive (so no parent has changed)."""
        if not self.complete:
            return False
        fds = [p.fd for p in self._pins]
        if not fds:
            return True
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        self.complete = False  # a closed set is never current: its pidfds are gone
        _close(self._pins)
        self._pins = []

    def reason(self, pid: int) -> str | None:
        if pid == 1:
            return "pid 1 (init) is never signalled"
        if pid in self.sdd:
            return f"pid {pid} is sdd itself"
        if pid in self.pids:
            return f"pid {pid} is an ancestor of sdd"
        if procfs.is_kernel_thread(pid):
            return f"pid {pid} is a kernel thread"
        return None


_NEVER_CACHED = 16     # sets of sdd pids remembered (one per executor connection; tests make many)
_nevers: dict[frozenset[int], _Never] = {}
_nevers_lock = threading.Lock()


def _never(policy: Policy) -> _Never:
    """The never-signalled set for `policy`'s sdd pids: the cached one while it is current, else read anew."""
    key = frozenset(policy.sdd_pids)
    with _nevers_lock:
        cached = _nevers.get(key)
        if cached is not None and cached.current():
            return cached
    fresh = _Never(key)
    with _nevers_lock:
        old = _nevers.pop(key, None)
        if old is not None and old is not cached:
            old.close()
        if cached is not None:
            cached.close()  # nobody holds it past a kill's own reads: kill() takes it anew each request
        while len(_nevers) >= _NEVER_CACHED:
            _nevers.pop(next(iter(_nevers))).close()
        _nevers[key] = fresh
    return fresh


def _protection(pid: int, protected: frozenset[str]) -> str | None:
    """Why `pid` is protected, or None. Protected: it runs a listed executable — by the path the kernel
    records, the very inode now at that path (or, deleted by an upgrade, a root-owned one), in directories
    only root can change — as root or a system account. A copy, a bind mount or a name proves nothing."""
    if not protected:
        return None
    path, st = procfs.exe(pid)
    if path is None or st is None:
        return None
    deleted = path.endswith(" (deleted)")
    real = path.removesuffix(" (deleted)")
    if real not in protected or st.st_uid != 0 or st.st_mode & 0o022:
        return None
    if not_root_owned(os.path.dirname(real)) is not None:
        return None
    if not deleted:
        try:
            now = os.lstat(real)
        except OSError:
            return None
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return None
    uid = procfs.real_uid(pid)
    if uid is None or uid >= FIRST_USER_UID:
        return None
    return f"pid {pid} runs {real} as uid {uid}, a protected executable (actions.protected_processes)"


def _refusal(pid: int, never: _Never, protected: frozenset[str]) -> str | None:
    return never.reason(pid) or _protection(pid, protected)


def _identity(meta: dict[str, Any]) -> FileIdentity | None:
    if not all(isinstance(meta.get(k), int) for k in ("dev", "ino", "size", "mtime_ns")):
        return None  # quarantined before sdd recorded inodes
    return FileIdentity(meta["dev"], meta["ino"], meta["original_path"], "vault", meta["size"], meta["mtime_ns"])


def _evidence(policy: Policy, path: str, qid: str | None, run_id: str | None,
              hints: tuple[str, ...]) -> FileIdentity:
    """The detected file's inode: this run's quarantine record, else the live file, else the newest record."""
    vault = Vault(policy.vault_dir)
    if qid is not None:
        ident = _identity(vault.read_meta(qid))
        if ident is None:
            raise NotFound(f"kill_process: quarantine item {qid} has no recorded inode")
        return ident
    if run_id is not None:
        mine = vault.find(path, "quarantined", hints, run_id=run_id)
        if mine is not None and (ident := _identity(mine)) is not None:
            return ident
    try:
        with open_parent(path, what="kill_process") as parent:
            st = lstat_at(parent)
    except NotFound:
        st = None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise Forbidden(f"kill_process: {path} is {describe_type(st.st_mode)}; only a regular file links "
                            f"processes to a detection")
        return FileIdentity(st.st_dev, st.st_ino, path, "file")
    newest = vault.find(path, "quarantined", hints)
    if newest is not None and (ident := _identity(newest)) is not None:
        return ident
    raise NotFound(f"kill_process: {path} does not exist and the vault holds no record of it, so no process "
                   f"can be linked to it")


def _describe(target: Pinned, linked: list[str]) -> dict[str, Any]:
    path, _ = procfs.exe(target.pid)
    return {"pid": target.pid, "start_time": target.start_time, "exe": path, "uid": procfs.real_uid(target.pid),
            "linked": linked}


def _pin_claimed(pid: int, expected: float | None, ident: FileIdentity | None,
                 never: _Never, protected: frozenset[str]) -> tuple[Pinned, dict[str, Any]] | None:
    """The process a step names by pid, pinned and checked; None when it is already gone."""
    group = procfs.tgid(pid)
    if group is None:
        return None
    if group != pid:
        owner = "sdd itself" if group in never.sdd else f"process {group}"
        raise Forbidden(f"kill_process: {pid} is a thread of {owner}, not a process; only a process "
                        f"(thread-group leader) is ever signalled")
    reason = never.reason(pid)
    if reason:
        raise Forbidden(f"kill_process: {reason}")
    try:
        target = Pinned(pid)
    except Gone:
        return None
    except NotAProcess:
        raise Forbidden(f"kill_process: {pid} is a thread, not a process") from None
    try:
        if expected is None:
            expected = target.start_time
        if abs(target.start_time - expected) > START_TIME_TOLERANCE:
            raise Conflict(f"kill_process: pid {pid} now belongs to a different process (started at "
                           f"{target.start_time:.2f}, expected {expected:.2f}); the original is gone and the pid "
                           f"was reused, not killing it")
        linked = procfs.links(pid, ident) if ident is not None else ["trusted"]
        if not linked:
            exe, _ = procfs.exe(pid)
            raise Forbidden(f"kill_process: pid {pid} ({exe or 'executable unknown'}) neither executes, holds "
                            f"open nor maps {ident.path if ident else 'the detected file'}; not killing it "
                            f"({TRUST_HINT})")
        why = _protection(pid, protected)
        if why:
            raise Forbidden(f"kill_process: {why}")
        info = _describe(target, linked)
        if not target.alive():
            target.close()
            return None
        return target, info
    except BaseException:
        target.close()
        raise


class _HolderScans:
    """The /proc walks that find a file's holders (`procfs.scan_links`), shared by concurrent requests.

    A walk reads every process's exe, fds and maps, whatever the files: during an outbreak many kill requests
    want it at once. A request arriving while no walk runs starts one; requests arriving while a walk runs are
    answered together by the next walk (which starts after they arrived, so it sees what they would have
    seen), each with its own file's holders. The holders found are candidates only: `_pin_holders` pins each
    and checks its links again, as it did when it walked /proc itself."""

    def __init__(self) -> None:
        self._waiting: list[tuple[FileIdentity, asyncio.Future[dict[int, list[str]]]]] = []
        self._walker: asyncio.Task[None] | None = None
        self.walks = 0  # how many walks were made (tests, bench)

    async def holders(self, ident: FileIdentity) -> dict[int, list[str]]:
        fut: asyncio.Future[dict[int, list[str]]] = asyncio.get_running_loop().create_future()
        self._waiting.append((ident, fut))
        if self._walker is None:
            self._walker = asyncio.create_task(self._walk())
        return await fut

    async def _walk(self) -> None:
        batch: list[tuple[FileIdentity, asyncio.Future[dict[int, list[str]]]]] = []
        try:
            while self._waiting:
                batch, self._waiting = [w for w in self._waiting if not w[1].done()], []
                if not batch:
                    continue
                self.walks += 1
                try:
                    found = await asyncio.to_thread(procfs.scan_links, [ident for ident, _ in batch])
                except Exception as exc:  # noqa: BLE001 - each request gets the walk's failure as its own
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), holders in zip(batch, found, strict=True):
                    if not fut.done():
                        fut.set_result(holders)
                batch = []
        finally:
            self._walker = None
            for _, fut in batch + self._waiting:  # the walker itself was cancelled (the loop is closing)
                fut.cancel()
            self._waiting = []


_scans: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _HolderScans] = weakref.WeakKeyDictionary()


def holder_scans() -> _HolderScans:
    """This event loop's shared holder scans."""
    loop = asyncio.get_running_loop()
    scans = _scans.get(loop)
    if scans is None:
        scans = _scans[loop] = _HolderScans()
    return scans


def _pin_holders(ident: FileIdentity, candidates: Iterable[int], never: _Never,
                 protected: frozenset[str]) -> tuple[list[Pinned], list[dict[str, Any]], list[dict[str, Any]]]:
    """Every process executing, holding open or mapping the file (fuser), pinned; refused ones listed.
    `candidates` are the pids a walk of /proc found linked to it (`_HolderScans`)."""
    targets: list[Pinned] = []
    found: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    try:
        for pid in sorted(candidates):
            try:
                target = Pinned(pid)
            except (Gone, NotAProcess):
                continue
            linked = procfs.links(pid, ident)  # again, now that the pid cannot be reused under us
            why = _refusal(pid, never, protected) if linked else None
            if not linked or why or not target.alive():
                target.close()
                if why:
                    skipped.append({"pid": pid, "reason": why})
                continue
            targets.append(target)
            found.append(_describe(target, linked))
    except BaseException:
        _close(targets)
        raise
    return targets, found, skipped


def _close(targets: Iterable[Pinned]) -> None:
    for t in targets:
        t.close()


def _send(target: Pinned, sig: int) -> bool:
    try:
        return target.signal(sig)
    except PermissionError:
        raise Forbidden(f"kill_process: not permitted to signal pid {target.pid}") from None


def _freeze_tree(roots: list[Pinned], never: _Never, protected: frozenset[str],
                 skipped: list[dict[str, Any]]) -> list[Pinned]:
    """SIGSTOP the roots and then their descendants, so the tree cannot fork away while it is enumerated;
    a descendant that must not be signalled is checked before it is stopped, and its subtree left alone."""
    for root in roots:
        _send(root, signal.SIGSTOP)
    seen = {t.pid for t in roots}
    refused: set[int] = set()
    kids: list[Pinned] = []
    for _ in range(3):  # enumerate again: a child may have forked just before its parent stopped
        new = 0
        for root in roots:
            for pid in procfs.children(root.pid):  # parents before their children
                if pid in seen or pid in refused:
                    continue
                if procfs.parent(pid) in refused:
                    refused.add(pid)  # below a process that must not be signalled: its business
                    continue
                why = _refusal(pid, never, protected)
                if why:
                    refused.add(pid)
                    skipped.append({"pid": pid, "reason": why})
                    continue
                try:
                    kid = Pinned(pid)
                except (Gone, NotAProcess):
                    continue
                if procfs.parent(pid) not in seen or not kid.alive():
                    kid.close()  # it left the tree (or exited) between the listing and the pin
                    continue
                seen.add(pid)
                _send(kid, signal.SIGSTOP)
                kids.append(kid)
                new += 1
        if not new:
            break
    return kids


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _wait_gone(targets: list[Pinned], timeout: float) -> list[Pinned]:
    """Wait until every target has exited (a pidfd becomes readable) or the timeout passes; the survivors."""
    alive = [t for t in targets if t.alive()]
    if not alive or timeout <= 0:
        return alive
    loop = asyncio.get_running_loop()
    waiters = []
    for t in alive:
        fut: asyncio.Future[None] = loop.create_future()
        loop.add_reader(t.fd, _resolve, fut)
        waiters.append(fut)
    try:
        await asyncio.wait(waiters, timeout=timeout)
    finally:
        for t in alive:
            loop.remove_reader(t.fd)
    return [t for t in alive if t.alive()]


async def kill(policy: Policy, req: Kill, before_act: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    """Carry out one checked kill request (the daemon's handler parsed the step; this checks again)."""
    pid, expected, qid, trust = req.pid, req.start_time, req.quarantine_id, req.trust
    path = None
    if req.file_path is not None:
        path = checked_abs_path(req.file_path, lambda n, m: InvalidRequest(f"kill_process: {n}: {m}"), "file_path")
    if pid is None and path is None and qid is None:
        raise InvalidRequest("kill_process: give process_id, file_path (every process holding it) or both")
    if trust and (pid is None or expected is None):
        raise InvalidRequest("kill_process: trust_process_id needs process_id and process_start_time")
    if not trust and path is None and qid is None:
        raise Forbidden(f"kill_process: nothing links pid {pid} to a detected file (no file_path); "
                        f"not killing it ({TRUST_HINT})")
    if path is not None and not trust and not under_roots(path, policy.allowed_roots):
        raise Forbidden(f"kill_process: {path} is outside the allowed roots; no process is linked to a "
                        f"file there")
    protected = policy.protected_processes

    def checked() -> tuple[_Never, FileIdentity | None, tuple[Pinned, dict[str, Any]] | None]:
        # One trip to a worker thread for what is read before any signal (each read as before, in order).
        never = _never(policy)
        ident = None if trust else _evidence(policy, path or "", qid, req.run_id, req.hints)
        claimed = _pin_claimed(pid, expected, ident, never, protected) if pid is not None else None
        return never, ident, claimed

    never, ident, pinned = await asyncio.to_thread(checked)
    base: dict[str, Any] = {"process_id": pid, "file_path": req.file_path, "start_time": expected,
                            "already_gone": False, "processes": [], "terminated": [], "killed": [], "skipped": [],
                            "evidence": None if ident is None else {"source": ident.source, "path": ident.path,
                                                                     "dev": ident.dev, "ino": ident.ino}}
    if pid is not None:
        if pinned is None:
            return {**base, "already_gone": True}
        targets, base["processes"] = [pinned[0]], [pinned[1]]
        base["start_time"] = pinned[0].start_time
    else:
        assert ident is not None
        holders = await holder_scans().holders(ident)
        if holders:
            targets, base["processes"], base["skipped"] = await asyncio.to_thread(_pin_holders, ident, holders,
                                                                                  never, protected)
        else:
            targets = []
    try:
        return await _stop(targets, req, never, protected, base, before_act)
    finally:
        _close(targets)


async def _stop(targets: list[Pinned], req: Kill, never: _Never, protected: frozenset[str], base: dict[str, Any],
                before_act: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    include_children = req.include_children
    if req.dry_run:
        pids = [t.pid for t in targets]
        return {**base, "dry_run": True, "irreversible": True,
                "would": f"terminate {pids or 'no process'}" + (" and their children" * include_children)}
    if not targets:
        return base
    await before_act()
    kids: list[Pinned] = []
    try:
        if include_children:
            kids = await asyncio.to_thread(_freeze_tree, targets, never, protected, base["skipped"])
        chosen = targets + kids
        for target in chosen:
            if _send(target, signal.SIGTERM):
                base["terminated"].append(target.pid)
            if include_children:
                _send(target, signal.SIGCONT)  # a stopped process only acts on TERM once continued
        survivors = await _wait_gone(chosen, req.grace)
        for target in survivors:
            if _send(target, signal.SIGKILL):
                base["killed"].append(target.pid)
        still = await _wait_gone(survivors, 10.0)
        if still:
            raise PrimitiveError(f"kill_process: pid(s) {[s.pid for s in still]} still alive after SIGKILL",
                                 details={"start_time": base["start_time"]})
    finally:
        _close(kids)
    return base
