"""Spool intake, Maildir rules: watch `new/`, claim files into `cur/`, read and parse them, reject bad ones.

Where a detection enters sdd. The order of operations is what makes it lossless:
- the watch on `new/` (inotify read directly, see `sdd/intake/inotify.py`; non-recursive, created/moved-to events
  only) is armed *before* `new/` is scanned, so a file lands either before the scan (the scan sees it) or
  after the watch (an event);
- an inotify queue overflow and a slow timer both trigger a rescan of `new/`;
- a file is claimed by `link(new/x, cur/x)` + `unlink(new/x)` — no moved-out event for any watcher to hold
  back (watchdog held them ~0.5 s, field-notes.md) — and a name found in both directories counts as claimed;
- it is deleted from `cur/` only after the daemon has committed the detection (`Intake.done`) and, on this
  thread, `make_durable()` (the store's flush to disk) has returned after that; anything left in `cur/` at
  start-up is delivered again, marked `leftover` so the daemon can de-duplicate by spool name.

The file work runs on one worker thread in batches; the event loop only receives parsed batches.
Memory stays bounded with any number of files in the spool: at most `max_pending` names are remembered
(beyond that a rescan is scheduled) and at most `max_inflight` claimed files wait for their commit.
What a spool file must be to be accepted, and the spool's directories, are `sdd/intake/spool.py`'s; their names are
re-exported here for the modules that import them from the intake.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdd.intake.inotify import NameWatch
from sdd.intake.spool import SpoolLayout, SpoolRejection, describe_mode, parse_detection, read_spool_file
from sdd.logging import kv, story

__all__ = ["Claimed", "Deliver", "Intake", "Rejected"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claimed:
    """A parsed detection whose file sits in `cur/name` until `Intake.done([name])`."""

    name: str
    detection: dict[str, Any]
    leftover: bool = False  # found in cur/ at start-up: the daemon may already have committed it


@dataclass(frozen=True)
class Rejected:
    name: str
    reason: str


Deliver = Callable[[list[Claimed], list[Rejected]], None]


# Delivering again the files whose commit failed: first after RETRY_FIRST seconds, then twice as long each
# time commits still fail, at most RETRY_MAX.
RETRY_FIRST = 1.0
RETRY_MAX = 30.0


class Intake:
    """Owns the spool. `deliver(claimed, rejected)` is called on the worker thread after each batch."""

    def __init__(self, spool: Path, deliver: Deliver, *, max_file_size: int = 1024 * 1024,
                 rescan_interval: float = 30.0, batch_size: int = 256, max_inflight: int = 2048,
                 max_pending: int = 8192, on_first_scan: Callable[[], None] | None = None,
                 observer_timeout: float = 2.0) -> None:
        self.layout = SpoolLayout(spool)
        # Plain strings: a Path object per file operation costs more than the system call.
        self._new, self._cur = str(self.layout.new), str(self.layout.cur)
        self.deliver = deliver
        self.max_file_size = max_file_size
        self.rescan_interval = rescan_interval
        self.batch_size = batch_size
        self.max_inflight = max_inflight
        self.max_pending = max_pending
        self.on_first_scan = on_first_scan
        # Called (on the worker thread) before the files `done` names are deleted: whatever was committed
        # before it is on disk once it returns. If it raises, the files stay in cur/ for the next start.
        self.make_durable: Callable[[], None] | None = None
        self._observer_timeout = observer_timeout  # kept for callers; the direct inotify watch needs none
        self._cond = threading.Condition()
        self._pending: dict[str, None] = {}      # names to look at, in arrival order
        self._inflight: set[str] = set()         # claimed into cur/, waiting for done()
        self._deferred: set[str] = set()         # seen again while in flight: look once it is done
        self._unlink: list[str] = []
        self._late_rejects: list[tuple[str, str]] = []
        # Claimed files whose commit failed (a full disk, say): delivered again once `_retry_at` comes, after
        # a delay that doubles while commits keep failing (RETRY_FIRST .. RETRY_MAX) and resets when one works.
        self._retry: dict[str, None] = {}
        self._retry_at = 0.0
        self._retry_delay = RETRY_FIRST
        self._rescan_reasons: list[str] = []
        self._paused = False
        self._stopping = False
        self._first_scan_done = False
        self._thread: threading.Thread | None = None
        self._observer: NameWatch | None = None
        self.stats = {"claimed": 0, "rejected": 0, "rescans": 0, "overflows": 0, "retried": 0}

    # -- lifecycle
    def start(self) -> None:
        self.layout.ensure()
        # The watch is armed when this returns ...
        self._observer = NameWatch(self._new, self.notify_names, self._watch_overflowed, self._watch_failed)
        with self._cond:  # ... and only then is new/ scanned (after cur/'s leftovers)
            self._rescan_reasons.append("start-up")
        self._thread = threading.Thread(target=self._run, name="sdd-intake", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops watching and claiming; files not yet claimed stay in new/ for the next start."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._observer is not None:
            self._observer.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._observer is not None:
            self._observer.join(timeout=10)

    def drain(self) -> None:
        """After stop(): remove the files of detections committed since (no thread is left to do it)."""
        with self._cond:
            unlink, self._unlink = self._unlink, []
            late, self._late_rejects = self._late_rejects, []
        if unlink and self._durable():
            for name in unlink:
                self._remove(f"{self._cur}/{name}")
        rejected: list[Rejected] = []
        for name, reason in late:
            self._reject(self.layout.cur / name, name, reason, rejected)

    # -- called from other threads
    def notify_name(self, name: str) -> None:
        with self._cond:
            self._add_pending(name)
            self._cond.notify()

    def notify_names(self, names: list[str]) -> None:
        with self._cond:
            for name in names:
                self._add_pending(name)
            self._cond.notify()

    def rescan(self, reason: str) -> None:
        with self._cond:
            if reason == "inotify queue overflow":
                self.stats["overflows"] += 1
            self._rescan_reasons.append(reason)
            self._cond.notify()

    def pause(self) -> None:
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            if self._paused:
                self._paused = False
                self._cond.notify()

    def done(self, names: list[str]) -> None:
        """The detections in cur/NAMES are committed: their files may go."""
        with self._cond:
            self._unlink.extend(names)
            if names:
                self._retry_delay = RETRY_FIRST
            self._cond.notify()

    def release(self, names: list[str]) -> None:
        """Claimed files whose detections could not be committed: they stay in cur/, no longer count against
        the in-flight bound, and are delivered again (as leftovers: the daemon de-duplicates by spool name)
        after a delay, and at the next start if the daemon stops first. Without the retry, a database that
        failed for a while (its disk full) left them unprocessed until a restart."""
        if not names:
            return
        with self._cond:
            self._inflight.difference_update(names)
            if not self._retry:
                self._retry_at = time.monotonic() + self._retry_delay
                self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
            self._retry.update(dict.fromkeys(names))
            self._cond.notify()

    def reject_claimed(self, items: list[tuple[str, str]]) -> None:
        """Claimed files the daemon could not accept after all: move cur/NAME to rejected/ with the reason."""
        with self._cond:
            self._late_rejects.extend(items)
            self._cond.notify()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # -- called on the watch's thread
    def _watch_overflowed(self) -> None:
        log.warning("inotify queue overflow: events were lost; rescanning new/")
        self.rescan("inotify queue overflow")

    def _watch_failed(self, exc: OSError) -> None:
        # The descriptor is gone: the safety timer's rescans still find files.
        log.error("inotify read failed; relying on periodic rescans", extra=kv(error=exc))

    # -- worker thread
    def _add_pending(self, name: str) -> None:
        if name in self._inflight:
            self._deferred.add(name)
        elif name not in self._pending:
            if len(self._pending) >= self.max_pending:
                if not self._rescan_reasons:
                    self._rescan_reasons.append("backlog")
            else:
                self._pending[name] = None

    def _can_claim(self) -> bool:
        return bool(self._pending) and not self._paused and len(self._inflight) < self.max_inflight

    def _take(self, names: dict[str, None]) -> list[str]:
        """The first of `names` (removed from it) that fit in a batch and the in-flight bound, now in flight."""
        room = min(self.batch_size, self.max_inflight - len(self._inflight))
        batch: list[str] = []
        while names and len(batch) < room:
            name = next(iter(names))
            del names[name]
            batch.append(name)
        self._inflight.update(batch)
        return batch

    def _retry_due(self, now: float) -> bool:
        return bool(self._retry) and now >= self._retry_at and not self._paused and \
            len(self._inflight) < self.max_inflight

    def _run(self) -> None:
        next_safety = time.monotonic() + self.rescan_interval
        leftovers = True
        while True:
            with self._cond:
                while not self._stopping and not self._unlink and not self._late_rejects and not self._can_claim() and not (
                        self._rescan_reasons and not self._paused and not self._pending) and not self._retry_due(
                        time.monotonic()):
                    timeout = next_safety - time.monotonic()
                    if self._retry:
                        timeout = min(timeout, max(self._retry_at - time.monotonic(), 0.001))
                    if timeout <= 0:
                        if "safety timer" not in self._rescan_reasons:
                            self._rescan_reasons.append("safety timer")
                        next_safety = time.monotonic() + self.rescan_interval
                        continue
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                unlink, self._unlink = self._unlink, []
                late, self._late_rejects = self._late_rejects, []
                for name in unlink + [n for n, _ in late]:
                    self._inflight.discard(name)
                    if name in self._deferred:
                        self._deferred.discard(name)
                        self._add_pending(name)
                scan = bool(self._rescan_reasons) and not self._paused and not self._pending
                reasons: list[str] = []
                batch: list[str] = []
                retry: list[str] = []
                if self._retry_due(time.monotonic()):
                    retry = self._take(self._retry)
                    if self._retry:  # the rest in the next turns, as room comes
                        self._retry_at = time.monotonic()
                if scan:
                    reasons, self._rescan_reasons = self._rescan_reasons, []
                elif self._can_claim():
                    batch = self._take(self._pending)
            if batch:  # new detections first: the flush and the deletions below can wait, they cannot
                self._process(batch)
            if retry:
                self._redeliver(retry)
            cur = self._cur
            if unlink and self._durable():
                for name in unlink:
                    self._remove(f"{cur}/{name}")
            if late:
                rejected: list[Rejected] = []
                for name, reason in late:
                    self._reject(self.layout.cur / name, name, reason, rejected)
                self._hand_over([], rejected)
            if scan:
                if leftovers:
                    leftovers = False
                    self._deliver_leftovers()
                self._scan_new(reasons)
                if not self._first_scan_done:
                    self._first_scan_done = True
                    if self.on_first_scan is not None:
                        self.on_first_scan()

    def _durable(self) -> bool:
        """Whether the detections `done` named may lose their files (one flush for all of them)."""
        if self.make_durable is None:
            return True
        try:
            self.make_durable()
        except Exception as exc:  # noqa: BLE001 -- not known to be on disk: the files stay for the next start
            log.error("cannot flush committed detections to disk; their spool files stay in cur/",
                      extra=kv(error=exc))
            return False
        return True

    def _scan_new(self, reasons: list[str]) -> None:
        self.stats["rescans"] += 1
        found = 0
        try:
            with os.scandir(self.layout.new) as it, self._cond:
                for entry in it:
                    found += 1
                    self._add_pending(entry.name)
                    if len(self._pending) >= self.max_pending:
                        self._rescan_reasons.append("backlog")  # the rest on the next scan
                        break
        except OSError as exc:
            log.error("cannot scan the spool", extra=kv(dir=self.layout.new, error=exc))
        if found or "safety timer" not in reasons:
            log.info("spool scanned", extra=kv(reason=",".join(sorted(set(reasons))), found=found))

    def _deliver_leftovers(self) -> None:
        """Files a crash left in cur/: claimed before, maybe committed; the daemon de-duplicates them."""
        try:
            names = sorted(os.listdir(self.layout.cur))
        except OSError as exc:
            log.error("cannot list cur/", extra=kv(dir=self.layout.cur, error=exc))
            return
        if names:
            log.info("re-processing files left in cur/", extra=kv(count=len(names)))
        for start in range(0, len(names), self.batch_size):
            chunk = names[start:start + self.batch_size]
            with self._cond:
                self._inflight.update(chunk)
            claimed: list[Claimed] = []
            rejected: list[Rejected] = []
            for name in chunk:
                self._drop_claimed_twin(name)
                self._read(name, claimed, rejected, leftover=True)
            self._hand_over(claimed, rejected)
            # Back-pressure applies to leftovers too.
            with self._cond:
                while not self._stopping and (self._paused or len(self._inflight) >= self.max_inflight):
                    self._cond.wait(1.0)
                    unlink, self._unlink = self._unlink, []
                    self._inflight.difference_update(unlink)
                    if unlink and self._durable():
                        for name in unlink:
                            self._remove(self.layout.cur / name)
                if self._stopping:
                    return

    def _redeliver(self, names: list[str]) -> None:
        """Claimed files whose commit failed, delivered again from cur/ (see `release`)."""
        self.stats["retried"] += len(names)
        log.warning("delivering again detections whose commit failed", extra=kv(count=len(names)))
        claimed: list[Claimed] = []
        rejected: list[Rejected] = []
        for name in names:
            self._read(name, claimed, rejected, leftover=True)
        self._hand_over(claimed, rejected)

    def _drop_claimed_twin(self, name: str) -> None:
        """A crash between link and unlink leaves the same file in new/ and cur/: it counts as claimed."""
        try:
            s, d = os.lstat(self.layout.new / name), os.lstat(self.layout.cur / name)
        except OSError:
            return
        if (s.st_dev, s.st_ino) == (d.st_dev, d.st_ino):
            self._remove(self.layout.new / name)

    def _process(self, batch: list[str]) -> None:
        claimed: list[Claimed] = []
        rejected: list[Rejected] = []
        for name in batch:
            try:
                cur_name = self._claim(name, rejected)
            except OSError as exc:
                log.error("cannot claim spool file", extra=kv(name=name, error=exc))
                cur_name = None
            if cur_name is None:
                with self._cond:
                    self._inflight.discard(name)
                continue
            if cur_name != name:
                with self._cond:
                    self._inflight.discard(name)
                    self._inflight.add(cur_name)
            self._read(cur_name, claimed, rejected, leftover=False)
        self._hand_over(claimed, rejected)

    def _hand_over(self, claimed: list[Claimed], rejected: list[Rejected]) -> None:
        self.stats["claimed"] += len(claimed)
        self.stats["rejected"] += len(rejected)
        if claimed or rejected:
            try:
                self.deliver(claimed, rejected)
            except Exception:
                log.exception("intake delivery failed")

    def _claim(self, name: str, rejected: list[Rejected]) -> str | None:
        """Moves new/NAME into cur/ (link + unlink); returns the name in cur/, or None if nothing to do."""
        src, dst = f"{self._new}/{name}", f"{self._cur}/{name}"
        try:
            os.link(src, dst, follow_symlinks=False)  # a symlink is linked as itself, never followed
        except FileNotFoundError:
            return None
        except FileExistsError:
            s, d = os.lstat(src), os.lstat(dst)
            if (s.st_dev, s.st_ino) == (d.st_dev, d.st_ino):
                pass  # a crash between link and unlink: already claimed
            else:  # a different file under a name still in cur/: claim it under a unique name
                name = f"{name}.{time.time_ns()}"
                os.link(src, f"{self._cur}/{name}", follow_symlinks=False)
        except OSError as exc:
            # Directories (EPERM) and anything else that cannot be linked: reject it from new/.
            try:
                st = os.lstat(src)
            except FileNotFoundError:
                return None
            if isinstance(exc, PermissionError) and stat.S_ISREG(st.st_mode) and not os.path.lexists(dst):
                # fs.protected_hardlinks: the unprivileged daemon may not link another user's file; a rename
                # claims it as atomically (only the daemon writes cur/, so nothing appears at dst meanwhile).
                try:
                    os.rename(src, dst)
                except FileNotFoundError:
                    return None
                return name
            reason = f"is {describe_mode(st.st_mode)}" if not stat.S_ISREG(st.st_mode) else f"cannot claim: {exc}"
            with self._cond:
                self._inflight.discard(name)
            self._reject(Path(src), name, reason, rejected)
            return None
        try:
            os.unlink(src)
        except FileNotFoundError:
            pass
        return name

    def _read(self, name: str, claimed: list[Claimed], rejected: list[Rejected], *, leftover: bool) -> None:
        path = f"{self._cur}/{name}"
        try:
            detection = parse_detection(read_spool_file(path, self.max_file_size))
        except SpoolRejection as exc:
            with self._cond:
                self._inflight.discard(name)
            self._reject(Path(path), name, str(exc), rejected)
            return
        except FileNotFoundError:
            with self._cond:
                self._inflight.discard(name)
            return
        except OSError as exc:
            with self._cond:
                self._inflight.discard(name)
            self._reject(Path(path), name, f"cannot read: {exc.strerror}", rejected)
            return
        claimed.append(Claimed(name, detection, leftover))

    def _reject(self, path: Path, name: str, reason: str, rejected: list[Rejected]) -> None:
        target = name
        for n in range(1000):
            candidate = name if n == 0 else f"{name}.{time.time_ns()}"
            if not os.path.lexists(self.layout.rejected / candidate) and not os.path.lexists(
                    self.layout.rejected / f"{candidate}.reason"):
                target = candidate
                break
        try:
            os.rename(path, self.layout.rejected / target)
        except OSError as exc:
            log.error("cannot move a rejected file", extra=kv(name=name, error=exc))
            self._remove(path)
        try:
            fd = os.open(self.layout.rejected / f"{target}.reason",
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(reason + "\n")
        except OSError as exc:
            log.error("cannot write a rejection reason", extra=kv(name=target, error=exc))
        log.warning("spool file rejected", extra=story(name=name, reason=reason))
        rejected.append(Rejected(target, reason))

    @staticmethod
    def _remove(path: str | Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("cannot remove a processed spool file", extra=kv(path=path, error=exc))
