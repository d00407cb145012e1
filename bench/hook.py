"""The ClamAV VirusEvent hook (`build/sdd-virusevent`, `make hook`): what one call costs, and what it adds to
a real outbreak scan, since clamd waits for every VirusEvent child.

- per_call: median wall time of one call as clamd makes it (`/bin/sh -c COMMAND`, only the two CLAM_*
  variables in the environment), 200 calls each, for the hook (writing into a spool on disk, fsyncs
  included: in a fresh directory, and in /var/tmp — see bench/ingest.py on ext4 without a journal),
  `/bin/true` (the floor of a VirusEvent at all), and `sddctl submit --clamav` (the old hook).
  Target: the hook <= 5 ms.
- outbreak: one `clamdscan --multiscan` of a directory of 200 infected files (a signature made with
  `sigtool --md5`), with VirusEvent = the hook, = /bin/true, and with no hook and `--move` (ClamAV's own
  containment), median of 3 scans each. Target: hook <= 3x /bin/true. (Containment by the daemon, and how
  long it takes, is bench/outbreak.py's figure, beside these scans.)
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HOOK = REPO / "build" / "sdd-virusevent"
SDDCTL = Path(sys.executable).parent / "sddctl"
CLAMD = shutil.which("clamd") or shutil.which("clamd", path="/usr/sbin:/sbin")
CLAMDSCAN = shutil.which("clamdscan")
SIGTOOL = shutil.which("sigtool")
SAMPLE = b"sdd bench outbreak sample: not a virus, a file whose MD5 the bench calls one\n" * 40


def _build_hook() -> None:
    subprocess.run(["make", "-s", "-C", str(REPO), "hook"], check=True, capture_output=True, timeout=300)


def _spool(root: Path) -> Path:
    for sub in ("tmp", "new"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def _median_call_ms(command: str, calls: int) -> float:
    env = {"CLAM_VIRUSEVENT_FILENAME": "/home/alice/Downloads/invoice.exe",
           "CLAM_VIRUSEVENT_VIRUSNAME": "Win.Test.EICAR_HDB-1"}
    walls = []
    for _ in range(calls):
        start = time.perf_counter()
        pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", command], env,
                             file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])
        _, status = os.waitpid(pid, 0)
        walls.append(time.perf_counter() - start)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{command}: exit status {status}")
    return round(statistics.median(walls) * 1e3, 2)


def _per_call(work: Path) -> dict[str, Any]:
    spool = _spool(work / "spool-calls")
    with tempfile.TemporaryDirectory(prefix="sdd-bench-hook-", dir="/var/tmp") as var_tmp:
        churned = _spool(Path(var_tmp))
        in_var_tmp = _median_call_ms(f"{HOOK} --spool {churned}", 200)
    out = {"hook_ms_median": _median_call_ms(f"{HOOK} --spool {spool}", 200),
           "hook_var_tmp_ms_median": in_var_tmp,
           "true_ms_median": _median_call_ms("/bin/true", 200),
           "sddctl_submit_clamav_ms_median": _median_call_ms(f"{SDDCTL} submit --clamav --spool {spool}", 20),
           "target_ms": 5}
    out["written"] = len(os.listdir(spool / "new"))
    return out


class _Clamd:
    def __init__(self, work: Path, name: str, virus_event: str | None) -> None:
        self.dir = work / name
        (self.dir / "db").mkdir(parents=True)
        shutil.copy(work / "test.hdb", self.dir / "db" / "test.hdb")
        self.conf = self.dir / "clamd.conf"
        lines = ["Foreground yes", f"LocalSocket {self.dir / 's'}", f"DatabaseDirectory {self.dir / 'db'}",
                 f"TemporaryDirectory {self.dir}", "MaxThreads 4"]
        if virus_event:
            lines.append(f"VirusEvent {virus_event}")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([str(CLAMD), "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while subprocess.run([str(CLAMDSCAN), "-c", str(self.conf), "--ping", "1"], capture_output=True,
                             check=False).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("clamd did not start")
            time.sleep(0.05)

    def scan(self, target: Path, *extra: str) -> float:
        start = time.perf_counter()
        r = subprocess.run([str(CLAMDSCAN), "-c", str(self.conf), "--multiscan", "--no-summary", *extra,
                            str(target)], capture_output=True, check=False, timeout=600)
        took = time.perf_counter() - start
        if r.returncode != 1:
            raise RuntimeError(f"clamdscan exit {r.returncode}: {r.stderr[-300:]!r}")
        return took

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _infected(directory: Path, n: int) -> Path:
    directory.mkdir(parents=True)
    for i in range(n):
        (directory / f"infected-{i:03d}.exe").write_bytes(SAMPLE)
    return directory


def _outbreak(work: Path, n: int = 200, repeats: int = 3) -> dict[str, Any]:
    sample = work / "sample"
    sample.write_bytes(SAMPLE)
    (work / "test.hdb").write_text(subprocess.run([str(SIGTOOL), "--md5", str(sample)], capture_output=True,
                                                  text=True, check=True).stdout)
    spool = _spool(work / "spool-outbreak")
    results: dict[str, list[float]] = {"hook": [], "true": [], "move": []}
    for name, event in (("hook", f"{HOOK} --spool {spool}"), ("true", "/bin/true"), ("move", None)):
        clamd = _Clamd(work, f"clamd-{name}", event)
        try:
            for r in range(repeats):
                target = _infected(work / f"outbreak-{name}-{r}", n)
                extra = [f"--move={_spool(work / f'moved-{r}')}"] if name == "move" else []
                results[name].append(clamd.scan(target, *extra))
        finally:
            clamd.stop()
    hook, true, move = (statistics.median(results[k]) for k in ("hook", "true", "move"))
    return {"files": n, "scan_s_hook": round(hook, 3), "scan_s_true": round(true, 3), "scan_s_move": round(move, 3),
            "hook_over_true": round(hook / true, 2), "target_hook_over_true": 3.0,
            "detections_written": len(os.listdir(spool / "new")), "expected": n * repeats}


def run() -> dict[str, Any]:
    _build_hook()
    base = "/" if os.access("/", os.W_OK) else "/var/tmp"  # a fresh directory: see the docstring
    with tempfile.TemporaryDirectory(prefix=".sdd-bench-hook-", dir=base) as tmp:
        work = Path(tmp)
        out: dict[str, Any] = {"per_call": _per_call(work)}
        if None in (CLAMD, CLAMDSCAN, SIGTOOL):
            out["outbreak"] = {"skipped": "ClamAV is not installed"}
        else:
            out["outbreak"] = _outbreak(work)
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
