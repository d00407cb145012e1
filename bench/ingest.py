"""`sdd-ingest`: what it costs to start, how fast a Falco stream goes into the spool, and whether the daemon
keeps up with it.

- startup: wall time of `sdd-ingest --format jsonl < /dev/null` (median of 15, the console script as
  installed), and `python -X importtime` of what it imports (the budget is 50 ms; for scale, the bare
  interpreter `python -S -I -c pass`).
- falco_stream: 20,000 Falco alerts (1 KB each, the documented json_output shape) written into the
  script's stdin pipe as fast as it takes them; detections/s from start to exit, every detection in new/ and
  durable (one syncfs per batch); detections/s, and the script's own CPU time per event (which the load
  of a shared machine hardly moves). The spool: `disk` in a fresh directory at the top of the root file
  system, `disk_var_tmp` in /var/tmp, `tmpfs` in /dev/shm (the ingest's own cost, no file system's).
  Target: >= 5,000/s.
- daemon_keeps_up: 5,000 alerts streamed into a running daemon (a one-step workflow on `falco`): how fast
  they go into its spool while it drains it, and until the last run is recorded completed.

Why the directories: on an ext4 without a journal (the reference machine's) creating a file skips, one by
one, the free inodes of its block group that were deleted in the last minutes (the kernel's
`recently_deleted`), so writing into a directory whose group sees many deletions — /var/tmp on a machine
running test-suites, a spool the daemon drains — costs far more system time; a new directory at the top of
the file system is placed in a quiet group. Journaling file systems do not do this.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.daemon import DaemonProcess

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
SDD_INGEST = str(BIN / "sdd-ingest")
NOTE = """workflow_id: falco_note
trigger: {type: falco}
steps:
  - step_id: note
    action: send_notification
    params: {message: "{{ detection.threat_name }}", channel: log}
"""


def falco_lines(n: int) -> bytes:
    out = []
    for i in range(n):
        event = {
            "hostname": "bench-host", "priority": "Warning", "rule": "Terminal shell in container",
            "source": "syscall", "tags": ["T1059", "container", "maturity_stable", "mitre_execution", "shell"],
            "time": f"2026-11-25T10:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i:09d}Z",
            "output": "10:20:05.408091526: Warning A shell was spawned in a container with an attached terminal "
                      f"(evt_type=execve user=root user_uid=0 process=bash proc_exepath=/usr/bin/bash parent=runc "
                      f"command=bash -i terminal=34816 exe_flags=EXE_WRITABLE container_id=8a3b2c1d9e0f n={i})",
            "output_fields": {
                "container.id": "8a3b2c1d9e0f", "container.image.repository": "docker.io/library/nginx",
                "container.name": "web", "evt.arg.flags": "EXE_WRITABLE", "evt.time": 1795602005408091526 + i,
                "evt.type": "execve", "fd.name": None, "k8s.ns.name": "default", "k8s.pod.name": "web-7d9f",
                "proc.cmdline": "bash -i", "proc.exepath": "/usr/bin/bash", "proc.name": "bash",
                "proc.pid": 1_000_000 + i, "proc.pname": "runc", "proc.tty": 34816, "user.loginuid": -1,
                "user.name": "root", "user.uid": 0,
            },
        }
        out.append(json.dumps(event).encode())
    return b"\n".join(out) + b"\n"


def _startup() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        for sub in ("tmp", "new"):
            os.mkdir(os.path.join(tmp, sub))
        walls = []
        for _ in range(15):
            start = time.perf_counter()
            subprocess.run([SDD_INGEST, "--format", "jsonl", "--spool", tmp], stdin=subprocess.DEVNULL,
                           capture_output=True, check=True)
            walls.append(time.perf_counter() - start)
    system = []
    if os.path.exists("/usr/bin/python3"):  # as the Debian package runs it: no venv, no editable install
        env = {"PYTHONPATH": str(REPO / "client"), "PATH": "/usr/bin:/bin"}
        with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            for sub in ("tmp", "new"):
                os.mkdir(os.path.join(tmp, sub))
            for _ in range(15):
                start = time.perf_counter()
                subprocess.run(["/usr/bin/python3", "-m", "sdd_client.ingest.main", "--format", "jsonl", "--spool",
                                tmp], stdin=subprocess.DEVNULL, capture_output=True, check=True, env=env)
                system.append(time.perf_counter() - start)
    floor = []
    for _ in range(15):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-S", "-I", "-c", "pass"], check=True)
        floor.append(time.perf_counter() - start)
    imports = []
    for _ in range(5):
        r = subprocess.run([sys.executable, "-X", "importtime", "-c",
                            "import sdd_client.ingest.main, sdd_client.ingest.falco"],
                           capture_output=True, text=True, check=True)
        # Top-level entries (no indentation) that are ours: their cumulative microseconds.
        ours = [int(m.group(1)) for m in re.finditer(r"import time:\s+\d+ \|\s+(\d+) \| sdd_client\S*$",
                                                     r.stderr, re.MULTILINE)]
        imports.append(sum(ours))
    return {"wall_ms_median": round(statistics.median(walls) * 1e3, 1),
            "system_python_wall_ms_median": round(statistics.median(system) * 1e3, 1) if system else None,
            "wall_ms_min": round(min(walls) * 1e3, 1),
            "own_imports_ms_median": round(statistics.median(imports) / 1e3, 1),
            "python_S_I_pass_ms_median": round(statistics.median(floor) * 1e3, 1),
            "target_ms": 50}


def _stream(data: bytes, spool: Path) -> tuple[float, subprocess.CompletedProcess[Any]]:
    proc = subprocess.Popen([SDD_INGEST, "--format", "falco", "--spool", str(spool)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def feed() -> None:
        assert proc.stdin is not None
        view = memoryview(data)
        for start in range(0, len(view), 64 * 1024):  # as a producer writes: line after line, no pause
            proc.stdin.write(view[start:start + 64 * 1024])
        proc.stdin.close()

    start = time.perf_counter()
    writer = threading.Thread(target=feed)
    writer.start()
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # its own CPU time: a figure the machine's load hardly moves
    proc.returncode = os.waitstatus_to_exitcode(status)
    writer.join()
    took = time.perf_counter() - start
    cpu = usage.ru_utime + usage.ru_stime
    return took, subprocess.CompletedProcess(proc.args, proc.returncode, cpu, err)


PLACES = (("disk", "/"), ("disk_var_tmp", "/var/tmp"), ("tmpfs", "/dev/shm"))


def _spool_dir(base: str) -> tempfile.TemporaryDirectory[str]:
    if base == "/" and not os.access("/", os.W_OK):
        base = "/var/tmp"  # not root: no fresh top-level directory
    return tempfile.TemporaryDirectory(prefix=".sdd-bench-ingest-", dir=base)


def _falco_stream(n: int = 20_000) -> dict[str, Any]:
    data = falco_lines(n)
    out: dict[str, Any] = {"events": n, "bytes_per_event": len(data) // n, "target_per_s": 5000}
    for label, base in PLACES:
        if not os.path.isdir(base):
            continue
        with _spool_dir(base) as tmp:
            spool = Path(tmp)
            for sub in ("tmp", "new"):
                (spool / sub).mkdir()
            took, r = _stream(data, spool)
            written = len(os.listdir(spool / "new"))
        out[label] = {"written": written, "exit": r.returncode, "seconds": round(took, 2),
                      "detections_per_s": round(n / took), "cpu_us_per_event": round(r.stdout / n * 1e6, 1),
                      "detections_per_cpu_s": round(n / r.stdout),
                      "summary": r.stderr.decode(errors="replace").strip().splitlines()[-1]}
    return out


def _keeps_up(base: str, n: int) -> dict[str, Any]:
    data = falco_lines(n)
    with _spool_dir(base) as tmp, DaemonProcess(Path(tmp), workflows={"falco_note": NOTE}) as d:
        start = time.perf_counter()
        took_ingest, r = _stream(data, d.spool)
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE status = 'completed'") >= n,
                   timeout=600, interval=0.1, what=f"{n} runs")
        took = time.perf_counter() - start
    return {"events": n, "ingest_per_s": round(n / took_ingest), "all_runs_completed_seconds": round(took, 2),
            "end_to_end_per_s": round(n / took), "ingest_exit": r.returncode}


def _daemon_keeps_up(n: int = 5_000) -> dict[str, Any]:
    out = {"disk": _keeps_up("/", n)}
    if os.path.isdir("/dev/shm"):
        out["tmpfs"] = _keeps_up("/dev/shm", n)
    return out


def run() -> dict[str, Any]:
    return {"startup": _startup(), "falco_stream": _falco_stream(), "daemon_keeps_up": _daemon_keeps_up()}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
