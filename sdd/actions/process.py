"""`kill_process`, the engine's side: read the step's parameters and the detection, ask the executor.

What may be signalled is decided by the executor (`sdd/executor/kill.py`, whose docstring gives the rules:
a thread-group leader with the right start time, linked to the detected file by inode, never pid 1, sdd,
its threads or ancestors, nor a protected executable); this module only gathers what the step claims.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sdd.executor import Kill, PrimitiveError
from sdd.executor.kill import TRUST_HINT
from sdd.executor.paths import checked_abs_path, under_roots
from sdd.executor.vault import QID_RE

from . import runinfo
from .errors import Forbidden, InvalidParams
from .executing import execute
from .files import index_hints
from .params import Params
from .services import ActionServices


async def kill_process(services: ActionServices, *, context: dict[str, Any] | None = None,
                       **params: Any) -> dict[str, Any]:
    p = Params("kill_process", params)
    pid = p.integer("process_id", minimum=1, maximum=2**22)
    file_path = p.abs_path("file_path", required=False)
    qid = p.string("quarantine_id", max_len=64)
    if qid is not None and not QID_RE.fullmatch(qid):
        raise p.fail("quarantine_id", f"expected 32 hexadecimal digits, got {qid!r:.80}")
    trust = p.boolean("trust_process_id")
    expected = p.number("process_start_time", minimum=0.0)
    include_children = p.boolean("include_children")
    grace = p.number("timeout", default=5.0, minimum=0.0, maximum=300.0)
    assert grace is not None
    det = runinfo.detection(context)
    if pid is not None and expected is None and str(det.get("process_id")) == str(pid):
        value = det.get("process_start_time")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            expected = float(value)
    if pid is None and file_path is None and qid is None:
        raise InvalidParams("kill_process: give process_id, file_path (every process holding it) or both")
    if trust and (pid is None or expected is None):
        raise InvalidParams("kill_process: trust_process_id: true needs process_id and process_start_time "
                            "(a parameter, or the detection's for the same pid)")
    evidence_path = file_path
    if evidence_path is None and not trust and qid is None:
        claimed = det.get("file_path")
        if not isinstance(claimed, str) or not claimed:
            raise Forbidden(f"kill_process: nothing links pid {pid} to a detected file (no file_path); "
                            f"not killing it ({TRUST_HINT})")
        evidence_path = checked_abs_path(claimed[:4096], lambda name, msg: InvalidParams(
            f"kill_process: the detection's {name}: {msg}"), "file_path")
    if evidence_path is not None and not trust and not under_roots(evidence_path, services.config.allowed_roots):
        raise Forbidden(f"kill_process: {evidence_path} is outside the allowed roots; no process is linked to a "
                        f"file there")
    run_id, _, key = runinfo.ids()
    if pid is not None and expected is None and key:
        # The start time this step saw first (an earlier attempt): a pid reused since is not the target.
        expected = services.seen_before(key, pid)
    hints = await asyncio.to_thread(index_hints, services, evidence_path) if evidence_path else ()
    req = Kill(pid=pid, start_time=expected, file_path=None if trust else evidence_path, quarantine_id=qid,
               run_id=run_id, hints=hints, trust=trust, include_children=include_children, grace=grace,
               dry_run=runinfo.dry_run())
    try:
        if req.dry_run:
            out = (await execute(services, req)).value
        else:
            # Waits (the step shows `waiting`) while the rate limit is reached; the slot is used only if the
            # executor finds a process to signal.
            async with services.guard_slot("kill_process") as slot:
                out = (await execute(services, req, slot.use)).value
    except Exception as exc:
        seen = getattr(exc.__cause__, "details", {}) if isinstance(exc.__cause__, PrimitiveError) else {}
        _remember(services, key, pid, seen.get("start_time"))
        raise
    _remember(services, key, pid, out.get("start_time"))
    out["file_path"] = file_path
    if out.get("dry_run") or not out.get("processes") or out.get("already_gone"):
        return out
    await services.audit("kill_process", ",".join(str(p["pid"]) for p in out["processes"]), "killed",
                         {"terminated": out["terminated"], "killed": out["killed"], "processes": out["processes"],
                          "evidence": out["evidence"]}, runinfo.text(det.get("id"), 256), run_id)
    return out


def _remember(services: ActionServices, key: str | None, pid: int | None, start_time: Any) -> None:
    if key and pid is not None and isinstance(start_time, (int, float)):
        services.first_seen(key, pid, float(start_time))
