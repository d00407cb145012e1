"""`kill_process`: terminate a process (optionally its whole tree) identified by pid AND start time.

A pid alone names whatever runs under it now; after the original exits the kernel may hand the number to
something else. So the start time is fixed first — from the step's parameters, else the detection's
`process_start_time` when the detection names this pid, else the first time this step looked — and psutil
re-checks it before every signal. Refused outright: pid 1, the daemon and its ancestors, kernel threads,
and the configured protected names. TERM, wait, KILL; a process already gone counts as done.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import psutil

from . import runinfo
from .errors import ActionError, Conflict, Forbidden
from .params import Params
from .services import ActionServices

PF_KTHREAD = 0x00200000
# create_time counts clock ticks: two processes in different ticks differ by at least one tick, so half a
# tick absorbs float noise (and a producer's rounding to 10 ms) without ever confusing two processes.
START_TIME_TOLERANCE = 0.5 / os.sysconf("SC_CLK_TCK")


def _is_kernel_thread(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return pid == 2 or int(fields[1]) == 2 or bool(int(fields[6]) & PF_KTHREAD)
    except (IndexError, ValueError):
        return False


def _protected_pids(services: ActionServices) -> set[int]:
    pids = {0, 1, os.getpid(), services.daemon_pid}
    for start in {os.getpid(), services.daemon_pid}:
        try:
            pids.update(p.pid for p in psutil.Process(start).parents())
        except psutil.Error:
            pass
    return pids


def _refusal(proc: psutil.Process, services: ActionServices, protected_pids: set[int]) -> str | None:
    """Why this process must not be signalled, or None."""
    pid = proc.pid
    if pid == 1:
        return "pid 1 (init) is never killed"
    if pid in protected_pids:
        return f"pid {pid} is the daemon or one of its ancestors"
    if _is_kernel_thread(pid):
        return f"pid {pid} is a kernel thread"
    names: set[str] = set()
    try:
        names.add(proc.name())
        cmdline = proc.cmdline()
        if cmdline:
            names.add(os.path.basename(cmdline[0]))
        exe = proc.exe()
        if exe:
            names.add(os.path.basename(exe))
    except psutil.AccessDenied:
        pass
    hit = names & set(services.config.protected_processes)
    if hit:
        return f"pid {pid} ({min(hit)}) is a protected process (actions.protected_processes)"
    return None


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _signal(proc: psutil.Process, sig: int) -> bool:
    """Send `sig` if the very same process still runs (psutil re-checks the start time); False if gone."""
    try:
        proc.send_signal(sig)
        return True
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        raise Forbidden(f"kill_process: not permitted to signal pid {proc.pid}") from None


async def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Poll until every process has exited (a zombie counts) or the deadline passes; returns survivors."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    alive = [p for p in procs if not _gone(p)]
    while alive and time.monotonic() < deadline:
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.1)
        alive = [p for p in alive if not _gone(p)]
    return alive


def _identify(services: ActionServices, pid: int, expected: float | None) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        started = proc.create_time()
    except psutil.NoSuchProcess:
        return None
    if expected is None:
        _, _, key = runinfo.ids()
        expected = services.first_seen(key or f"adhoc:{id(proc)}", pid, started)
    if abs(started - expected) > START_TIME_TOLERANCE:
        raise Conflict(f"kill_process: pid {pid} now belongs to a different process (started at {started:.2f}, "
                       f"expected {expected:.2f}); the original is gone and the pid was reused, not killing it")
    return proc


def _tree(proc: psutil.Process, include_children: bool) -> list[psutil.Process]:
    """The targets; with children, the tree is frozen first so it cannot fork away while we enumerate."""
    if not include_children:
        return [proc]
    _signal(proc, signal.SIGSTOP)
    seen: dict[int, psutil.Process] = {}
    for _ in range(3):  # re-enumerate: a child may have forked just before it was stopped
        try:
            found = proc.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        new = [c for c in found if c.pid not in seen]
        if not new:
            break
        for child in new:
            seen[child.pid] = child
            try:
                child.suspend()
            except psutil.Error:
                pass
    return [proc, *seen.values()]


async def kill_process(services: ActionServices, *, context: dict[str, Any] | None = None,
                       **params: Any) -> dict[str, Any]:
    p = Params("kill_process", params)
    pid = p.integer("process_id", required=True, minimum=1, maximum=2**22)
    assert pid is not None
    expected = p.number("process_start_time", minimum=0.0)
    det = runinfo.detection(context)
    if expected is None and str(det.get("process_id")) == str(pid):
        value = det.get("process_start_time")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            expected = float(value)
    include_children = p.boolean("include_children")
    grace = p.number("timeout", default=5.0, minimum=0.0, maximum=300.0)
    assert grace is not None

    proc = await asyncio.to_thread(_identify, services, pid, expected)
    base: dict[str, Any] = {"process_id": pid, "start_time": expected, "already_gone": False,
                            "terminated": [], "killed": [], "skipped": []}
    if proc is None or _gone(proc):
        return {**base, "already_gone": True}
    base["start_time"] = proc.create_time()
    protected = await asyncio.to_thread(_protected_pids, services)
    reason = await asyncio.to_thread(_refusal, proc, services, protected)
    if reason:
        raise Forbidden(f"kill_process: {reason}")
    try:
        base["name"] = proc.name()
    except psutil.Error:
        base["name"] = None
    if runinfo.dry_run():
        return {**base, "dry_run": True, "would": f"terminate pid {pid}" + (" and its children" * include_children),
                "irreversible": True}
    services.guards.acquire("kill_process")
    targets = await asyncio.to_thread(_tree, proc, include_children)
    chosen = [proc]
    for child in targets[1:]:
        why = await asyncio.to_thread(_refusal, child, services, protected)
        if why:
            base["skipped"].append({"pid": child.pid, "reason": why})
            try:
                child.resume()
            except psutil.Error:
                pass
        else:
            chosen.append(child)
    for target in chosen:
        if _signal(target, signal.SIGTERM):
            base["terminated"].append(target.pid)
        if include_children:
            _signal(target, signal.SIGCONT)  # a stopped process only acts on TERM once continued
    survivors = await _wait_gone(chosen, grace)
    for target in survivors:
        if _signal(target, signal.SIGKILL):
            base["killed"].append(target.pid)
    still = await _wait_gone(survivors, 10.0)
    if still:
        raise ActionError(f"kill_process: pid(s) {[s.pid for s in still]} still alive after SIGKILL")
    run_id, _, _ = runinfo.ids()
    await services.audit("kill_process", str(pid), "killed",
                         {"terminated": base["terminated"], "killed": base["killed"], "name": base["name"]},
                         runinfo.text(det.get("id"), 256), run_id)
    return base
