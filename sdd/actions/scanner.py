"""`run_scan` and `update_definitions`: the configured ClamAV programs, run without a shell.

ClamAV's exit codes decide: 0 clean, 1 threats found, 2 error. Findings are parsed from the
`FILE: SIGNATURE FOUND` lines into `[{file, signature}]` and counted in `threats_found`, so a workflow
condition such as `context.get("threats_found", 0) > 0` works.
"""

from __future__ import annotations

import os
import re
from typing import Any

from .errors import ActionError, NotFound
from .params import Params
from .services import ActionServices
from .subproc import run_argv

MAX_FINDINGS = 10_000
SCAN_TYPES = ("quick", "full", "file", "custom")
_SUMMARY = re.compile(r"^(Scanned files|Infected files|Total errors|Known viruses): *(\d+)")


def scanner_argv(configured: tuple[str, ...], path: str) -> list[str]:
    """The scan command: the configured argv plus what each ClamAV front end needs to scan `path`."""
    argv = list(configured)
    prog = os.path.basename(argv[0])
    if prog == "clamscan" and not any(a in ("-r", "--recursive") or a.startswith("--recursive=") for a in argv):
        argv.append("--recursive")
    if prog == "clamdscan" and os.geteuid() == 0 and "--fdpass" not in argv and "--stream" not in argv:
        # clamd runs as its own user; passing our descriptor lets it read root-only files.
        argv.append("--fdpass")
    if prog in ("clamscan", "clamdscan") and not any(a in ("-i", "--infected") for a in argv):
        argv.append("--infected")  # only the findings, so output stays small on big trees
    argv.append(path)  # absolute, so it can never be read as an option
    return argv


class _Findings:
    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []
        self.count = 0
        self.errors: list[str] = []
        self.summary: dict[str, int] = {}

    def line(self, line: str) -> None:
        line = line.rstrip("\r")
        if line.endswith(" FOUND"):
            file, sep, sig = line[: -len(" FOUND")].rpartition(": ")
            if sep:
                self.count += 1
                if len(self.items) < MAX_FINDINGS:
                    self.items.append({"file": file, "signature": sig})
                return
        if line.endswith(" ERROR") and len(self.errors) < 100:
            self.errors.append(line[:500])
            return
        m = _SUMMARY.match(line)
        if m:
            self.summary[m.group(1).lower().replace(" ", "_")] = int(m.group(2))


async def run_scan(services: ActionServices, *, context: dict[str, Any] | None = None,
                   **params: Any) -> dict[str, Any]:
    p = Params("run_scan", params)
    path = p.abs_path("path")
    assert path is not None
    scan_type = p.string("scan_type", default="full", choices=SCAN_TYPES)
    timeout = p.number("timeout", default=3600.0, minimum=1.0, maximum=86400.0)
    assert timeout is not None
    try:
        os.lstat(path)
    except FileNotFoundError:
        raise NotFound(f"run_scan: {path} does not exist") from None
    argv = scanner_argv(services.config.scanner, path)
    findings = _Findings()
    done = await run_argv(argv, timeout=timeout, head_limit=0, on_stdout_line=findings.line, what="run_scan")
    result: dict[str, Any] = {
        "path": path, "scan_type": scan_type, "exit_code": done.returncode,
        "threats_found": findings.count, "findings": findings.items,
        "findings_truncated": findings.count > len(findings.items), "clean": findings.count == 0,
        "errors": findings.errors, "summary": findings.summary, "complete": done.returncode in (0, 1),
        "scanner": argv[0],
    }
    if done.returncode in (0, 1):
        return result
    if findings.count:
        # Some files could not be scanned but threats were found: report them rather than lose them.
        result["stderr_tail"] = done.stderr_tail[-2000:]
        return result
    raise ActionError(f"run_scan: {argv[0]} exited with status {done.returncode}: "
                      f"{(done.stderr_tail or done.stdout_tail).strip()[-500:]}")


async def update_definitions(services: ActionServices, *, context: dict[str, Any] | None = None,
                             **params: Any) -> dict[str, Any]:
    p = Params("update_definitions", params)
    timeout = p.number("timeout", default=600.0, minimum=1.0, maximum=7200.0)
    assert timeout is not None
    argv = list(services.config.updater)
    done = await run_argv(argv, timeout=timeout, tail_limit=4096, what="update_definitions")
    output = (done.stdout_tail + done.stderr_tail)[-4000:]
    if done.returncode != 0:
        raise ActionError(f"update_definitions: {argv[0]} exited with status {done.returncode}: "
                          f"{output.strip()[-500:]}")
    return {"updated": True, "exit_code": 0, "updater": argv[0], "output_tail": output}
