"""A process's start time as psutil's `create_time()` gives it, read from /proc without psutil.

`kill_process` compares a detection's `process_start_time` with psutil's value to half a clock tick, so a
producer that records the start time must compute it the same way: boot time (`btime` of /proc/stat, whole
seconds) plus the `starttime` field of /proc/PID/stat in clock ticks.
"""

from __future__ import annotations

import os

_btime: int | None = None


def _boot_time() -> int:
    global _btime
    if _btime is None:
        with open("/proc/stat", "rb") as fh:
            for line in fh:
                if line.startswith(b"btime "):
                    _btime = int(line.split()[1])
                    break
            else:
                raise ValueError("/proc/stat has no btime line")
    return _btime


def start_time(pid: int) -> float:
    """Epoch seconds process `pid` started; raises OSError (no such process) or ValueError (unreadable)."""
    with open(f"/proc/{int(pid)}/stat", "rb") as fh:
        stat = fh.read()
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")



def _precise_boot_time() -> float:
    # Wall clock minus time since boot: /proc/stat's btime is rounded down to the second.
    import time

    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def identify(pid: int, event_time: float | None, claimed_start: float | None = None,
             exe: str | None = None, tolerance: float = 1.0) -> float | None:
    """The start time (psutil's convention) of the process a producer saw as `pid`, or None when the process
    under that pid now cannot be shown to be the one it saw.

    A pid names whatever runs under it now. The process the producer saw was alive at `event_time`, so any
    later holder of the pid started after that: a process that started no later than the event (to a clock
    tick), whose start matches the producer's own `claimed_start` when it gave one (within `tolerance`, for
    producers that count boot time in whole seconds) and whose executable is `exe` when given, is the one.
    """
    try:
        fd = os.open(f"/proc/{int(pid)}/stat", os.O_RDONLY | os.O_CLOEXEC)  # no buffered file: one per alert
        try:
            stat = os.read(fd, 4096)
        finally:
            os.close(fd)
        ticks = int(stat[stat.rindex(b")") + 2:].split()[19])
        if exe is not None:
            try:
                link = os.readlink(f"/proc/{int(pid)}/exe")
            except PermissionError:
                link = None  # not ours to read: the start time alone decides
            if link is not None and link not in (exe, exe + " (deleted)"):
                return None
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    precise = _precise_boot_time() + ticks / hz
    if event_time is not None and precise > event_time + 2.0 / hz:
        return None
    if claimed_start is not None and abs(precise - claimed_start) > tolerance:
        return None
    return _boot_time() + ticks / hz


__all__ = ["identify", "start_time"]
