"""`run_scan` and `update_definitions`, the engine's side: parameters here, the scan in the executor.

`run_scan` never hands a scanner a path: the executor (`sdd/executor/scan.py`, as root in system mode)
walks the tree inside `[actions] allowed_roots` without following a symlink and gives the scanner open
descriptors (clamd by descriptor, `clamscan` on `/proc/self/fd/N`, YARA on their contents), so each
finding is the path the walk opened, character for character. `update_definitions` runs the configured
updater in the daemon.
"""

from __future__ import annotations

import os
from typing import Any

from sdd.engine import path_problem
from sdd.executor import Scan
from sdd.executor.scan import within_roots
from sdd.executor.subproc import run_argv

from .errors import ActionError, Forbidden, NotFound
from .executing import execute
from .lending import lent
from .params import Params
from .services import ActionServices

SCAN_TYPES = ("quick", "full", "file", "custom")
ENGINES = ("clamav", "yara")


async def run_scan(services: ActionServices, *, context: dict[str, Any] | None = None,
                   **params: Any) -> dict[str, Any]:
    p = Params("run_scan", params)
    path = p.abs_path("path")
    assert path is not None
    scan_type = p.string("scan_type", default="full", choices=SCAN_TYPES)
    timeout = p.number("timeout", default=3600.0, minimum=1.0, maximum=86400.0)
    assert timeout is not None
    engine = p.string("engine", default="clamav", choices=ENGINES) or "clamav"
    if engine != "yara" and p.present("max_file_size"):
        raise p.fail("max_file_size", "applies to engine: yara (ClamAV's limits are clamd.conf's)")
    max_file_size = p.integer("max_file_size")
    if not within_roots(path, services.config.allowed_roots):
        roots = ", ".join(str(r) for r in services.config.allowed_roots) or "(none configured)"
        raise Forbidden(f"run_scan: {path} is outside the allowed roots ({roots})")
    if engine == "yara":
        _check_rules_dir(services.config.yara_rules, services.config.user_mode)
    # A scan waits on another program (clamd, clamscan, or the executor's YARA): its run lends its slot while it
    # waits, here and for its place among the scans at once, so a hung or long scan cannot hold up the
    # containment of the next detections (`lending`).
    async with lent(services.on_outbound), services.scans:
        done = (await execute(services, Scan(path, engine, timeout, max_file_size))).value
    tally, more = done["tally"], dict(done["more"])
    return {
        "path": done["path"], "scan_type": scan_type, "engine": engine, "scanner": done["scanner"],
        "exit_code": done["exit_code"], "threats_found": tally["threats"], "findings": tally["findings"],
        "findings_undecodable": tally["undecodable"],
        "findings_truncated": tally["threats"] > len(tally["findings"]) + len(tally["undecodable"]),
        "clean": tally["threats"] == 0, "errors": tally["errors"], "complete": tally["error_count"] == 0,
        "summary": {"scanned_files": tally["scanned"], "infected_files": tally["threats"],
                    "errors": tally["error_count"], "skipped_symlinks": tally["symlinks"],
                    "skipped_special": tally["special"],
                    **({"skipped_large": more.pop("skipped_large")} if "skipped_large" in more else {})},
        **more,
    }


def _check_rules_dir(directory: Any, user_mode: bool) -> None:
    """In system mode `[actions] yara_rules` must be root's all the way from / (symlinks resolved, as
    scripts_dir); in user mode the user may own it too. The executor checks the resolved directory again."""
    where = os.fspath(directory)
    owners = {0, os.geteuid()} if user_mode else {0}
    reason = path_problem(os.path.abspath(where), owners=owners, allow_sticky=user_mode)
    if reason is None:
        return
    if not os.path.lexists(where):
        raise NotFound(f"run_scan: the YARA rules directory {where} does not exist ([actions] yara_rules)")
    raise Forbidden(f"run_scan: the YARA rules directory is refused: {reason} (its rules decide what is "
                    f"quarantined, so they must be root's)")


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
