"""`generate_report`: an incident report of the current run, as JSON and as a self-contained HTML page.

Where the data comes from, best first: the `RunLog` (an engine listener the daemon registers, holding every
step's status, timing and result for recent runs), else the store's copy of the run, else a `steps`
parameter (e.g. `steps: "{{ steps }}"`). The HTML has an inline-SVG timeline of the steps, no scripts,
nothing fetched (a CSP forbids it), and every value is escaped. Files go to `STATE/reports/`, named after
the run and step, so a re-run rewrites the same report.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

from . import runinfo
from .params import Params
from .services import ActionServices

FORMATS = ("json", "html", "both")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_COLORS = {"completed": "#2e7d32", "failed": "#c62828", "skipped": "#9e9e9e", "rolled_back": "#ef6c00",
           "running": "#1565c0", "cancelled": "#6d4c41", "interrupted": "#6a1b9a"}


def _jsonable(value: Any, depth: int = 0) -> Any:
    if depth > 20:
        return "…"
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value[:10000]]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _collect(value: Any, out: dict[str, dict[str, Any]], depth: int = 0) -> None:
    """Every quarantined item mentioned in step results, however deeply nested (loops, parallels)."""
    if depth > 12:
        return
    if isinstance(value, Mapping):
        qid = value.get("quarantine_id")
        if isinstance(qid, str):
            out.setdefault(qid, {"quarantine_id": qid, "sha256": value.get("sha256"),
                                 "original_path": value.get("original_path")})
        for item in value.values():
            _collect(item, out, depth + 1)
    elif isinstance(value, list):
        for item in value[:10000]:
            _collect(item, out, depth + 1)


def _killed(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process a completed `kill_process` step says it signalled, with the signal that ended it."""
    out: list[dict[str, Any]] = []
    for s in steps:
        result = s.get("result")
        if s.get("action") != "kill_process" or s.get("status") != "completed" or not isinstance(result, Mapping):
            continue
        if result.get("dry_run"):
            continue
        base = {"step_id": s.get("step_id"), "process_id": result.get("process_id"), "name": result.get("name"),
                "start_time": result.get("start_time")}
        killed = {p for p in result.get("killed") or () if isinstance(p, int)}
        for pid in result.get("terminated") or ():
            if isinstance(pid, int) and pid not in killed:
                out.append({**base, "pid": pid, "signal": "SIGTERM"})
        for pid in sorted(killed):
            out.append({**base, "pid": pid, "signal": "SIGKILL"})
    return out


def summarise(result: Any, limit: int = 160) -> str:
    """One line saying what a step's result holds (`key=value, ...`), for the report's step table."""
    if isinstance(result, Mapping):
        text = ", ".join(f"{k}={summarise(v, 40)}" for k, v in result.items() if not str(k).startswith("_"))
    elif isinstance(result, (list, tuple)):
        text = f"[{len(result)} items]" if len(result) > 3 else ", ".join(summarise(v, 40) for v in result)
    else:
        text = "" if result is None else str(result)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _steps_from_param(steps: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for step_id, info in steps.items():
        if isinstance(info, Mapping):
            out.append({"step_id": str(step_id), "phase": "run", "status": info.get("status"),
                        "result": info.get("result"), "error": info.get("error"),
                        "attempts": info.get("attempts"), "started_at": None, "finished_at": None})
    return out


def build_report(report_type: str, run: Mapping[str, Any], detection: Mapping[str, Any],
                 context: Mapping[str, Any] | None) -> dict[str, Any]:
    steps = [_jsonable(s) for s in run.get("steps", [])]
    for s in steps:
        if s.get("started_at") is not None and s.get("finished_at") is not None:
            s["duration"] = round(s["finished_at"] - s["started_at"], 6)
        s["summary"] = s.get("error") or summarise(s.get("result"))
    quarantined: dict[str, dict[str, Any]] = {}
    # Only what a step did: a rollback's restore or a dry run's "would" is not a quarantine.
    _collect([s.get("result") for s in steps if s.get("phase", "run") == "run" and s.get("status") == "completed"
              and not (isinstance(s.get("result"), Mapping) and s["result"].get("dry_run"))], quarantined)
    hashes = sorted({q["sha256"] for q in quarantined.values() if isinstance(q.get("sha256"), str)})
    safe_context = {k: v for k, v in (context or {}).items() if not str(k).startswith("_")}
    return {"report_type": report_type, "generated_at": time.time(),
            "run": {k: _jsonable(run.get(k)) for k in ("run_id", "workflow_id", "status", "started_at",
                                                       "finished_at", "detection_id", "external_id")},
            "detection": _jsonable(detection), "steps": steps, "quarantine": list(quarantined.values()),
            "killed": _killed(steps), "hashes": hashes, "context": _jsonable(safe_context)}


def _svg_timeline(steps: list[dict[str, Any]]) -> str:
    timed = [s for s in steps if isinstance(s.get("started_at"), (int, float))]
    if not timed:
        return "<p>No timing recorded.</p>"
    t0 = min(s["started_at"] for s in timed)
    t1 = max((s.get("finished_at") or s["started_at"]) for s in timed)
    span = max(t1 - t0, 1e-6)
    width, label_w, row_h = 900, 260, 22
    height = row_h * len(timed) + 30
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
              f'aria-label="step timeline">')]
    for i, s in enumerate(timed):
        y = 10 + i * row_h
        start = (s["started_at"] - t0) / span
        end = ((s.get("finished_at") or s["started_at"]) - t0) / span
        x = label_w + start * (width - label_w - 20)
        w = max((end - start) * (width - label_w - 20), 2)
        color = _COLORS.get(str(s.get("status")), "#424242")
        name = f"{s.get('step_id')}" + (" (rollback)" if s.get("phase") == "rollback" else "")
        dur = s.get("duration")
        tip = f"{name}: {s.get('status')}" + (f", {dur:.3f} s" if isinstance(dur, (int, float)) else "")
        parts.append(f'<text x="4" y="{y + 14}" font-size="12">{html.escape(name[:40])}</text>'
                     f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h - 6}" fill="{color}">'
                     f'<title>{html.escape(tip)}</title></rect>')
    parts.append(f'<text x="{label_w}" y="{height - 4}" font-size="11">0 s</text>'
                 f'<text x="{width - 80}" y="{height - 4}" font-size="11">{span:.3f} s</text></svg>')
    return "".join(parts)


def render_html(report: Mapping[str, Any]) -> str:
    e = html.escape
    run = report["run"]
    rows = "".join(
        f"<tr><td>{e(str(s.get('step_id')))}</td><td>{e(str(s.get('phase')))}</td><td>{e(str(s.get('action')))}"
        f"</td><td class=\"{e(str(s.get('status')))}\">{e(str(s.get('status')))}</td>"
        f"<td>{e(str(s.get('attempts')))}</td><td>{e(str(s.get('duration', '')))}</td>"
        f"<td>{e(str(s.get('error') or ''))}</td><td>{e(str(s.get('summary') or ''))}</td>"
        f"<td><pre>{e(json.dumps(s.get('result'), indent=1, default=str)[:4000])}</pre></td></tr>"
        for s in report["steps"])
    killed = "".join(f"<li>pid <code>{e(str(k.get('pid')))}</code> ({e(str(k.get('name')))}), "
                     f"{e(str(k.get('signal')))} by step <code>{e(str(k.get('step_id')))}</code></li>"
                     for k in report.get("killed", []))
    quarantine = "".join(f"<li><code>{e(str(q['quarantine_id']))}</code> {e(str(q.get('original_path')))} "
                         f"sha256 <code>{e(str(q.get('sha256')))}</code></li>" for q in report["quarantine"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>sdd {e(report['report_type'])} report {e(str(run.get('run_id')))}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px;vertical-align:top}}pre{{margin:0;max-width:40em;overflow:auto}}.failed{{color:#c62828}}
.completed{{color:#2e7d32}}</style></head><body>
<h1>sdd {e(report['report_type'])} report</h1>
<p>Run <code>{e(str(run.get('run_id')))}</code> of workflow <code>{e(str(run.get('workflow_id')))}</code>,
status {e(str(run.get('status')))}, detection <code>{e(str(run.get('detection_id')))}</code>
(producer's id <code>{e(str(run.get('external_id')))}</code>); generated {e(time.strftime('%Y-%m-%d %H:%M:%S %Z',
                                                                     time.localtime(report['generated_at'])))}.</p>
<h2>Detection</h2><pre>{e(json.dumps(report['detection'], indent=1, default=str))}</pre>
<h2>Timeline</h2>{_svg_timeline(report['steps'])}
<h2>Steps</h2><table><tr><th>step</th><th>phase</th><th>action</th><th>status</th><th>attempts</th>
<th>seconds</th><th>error</th><th>summary</th><th>result</th></tr>{rows}</table>
<h2>Quarantined</h2><ul>{quarantine or '<li>nothing</li>'}</ul>
<h2>Killed</h2><ul>{killed or '<li>nothing</li>'}</ul>
</body></html>
"""


def _write(directory: str, files: list[tuple[str, bytes]]) -> list[str]:
    """Write each (name, data) in `directory` atomically (temporary file, fsync, rename), the directory
    fsync'd once after the renames."""
    os.makedirs(directory, mode=0o750, exist_ok=True)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        written = []
        for name, data in files:
            tmp = f".tmp-{secrets.token_hex(8)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640,
                         dir_fd=dfd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            written.append((tmp, name))
        for tmp, name in written:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return [os.path.join(directory, name) for name, _ in files]


def _render_and_write(directory: str, base: str, fmt: str, report: dict[str, Any]) -> dict[str, str]:
    """The report's files (one trip to a worker thread: encoding, rendering and writing)."""
    files: list[tuple[str, bytes]] = []
    keys = []
    if fmt in ("json", "both"):
        files.append((base + ".json", json.dumps(report, indent=1, sort_keys=True, default=str).encode()))
        keys.append("json_path")
    if fmt in ("html", "both"):
        files.append((base + ".html", render_html(report).encode()))
        keys.append("html_path")
    return dict(zip(keys, _write(directory, files), strict=True))


async def generate_report(services: ActionServices, *, context: dict[str, Any] | None = None,
                          **params: Any) -> dict[str, Any]:
    p = Params("generate_report", params)
    report_type = p.string("report_type", default="incident", max_len=64) or "incident"
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", report_type):
        raise p.fail("report_type", "use letters, digits, '_' and '-' only")
    fmt = p.string("format", default="both", choices=FORMATS) or "both"
    include_context = p.boolean("include_context", default=True)
    info = runinfo.step()
    run_id = info.run_id if info else f"adhoc-{int(time.time())}-{secrets.token_hex(4)}"
    run = services.run_log.get(run_id) if info else None
    if run is None and info is not None and services.store is not None:
        flush = getattr(services.store, "flush", None)
        if flush is not None:
            await flush()  # the recorder enqueues idempotent steps' outcomes without waiting
        stored = await asyncio.to_thread(services.store.get_run, run_id)
        if stored:
            run = stored
    if run is None:
        run = {"run_id": run_id, "workflow_id": info.workflow_id if info else None, "status": "running",
               "steps": []}
    if not run.get("steps") and isinstance(p.raw.get("steps"), Mapping):
        run = {**run, "steps": _steps_from_param(p.raw["steps"])}
    det = runinfo.detection(context)
    # Built on the loop: the context and run log may change under a thread while parallel steps run.
    report = build_report(report_type, run, det, context if include_context else None)
    base = _SAFE.sub("_", f"{run_id}-{info.step_id if info else 'report'}-{report_type}")[:200]
    out: dict[str, Any] = {"report_type": report_type, "report_id": base, "steps": len(report["steps"]),
                           "quarantine_ids": [q["quarantine_id"] for q in report["quarantine"]],
                           "hashes": report["hashes"], "killed_pids": [k["pid"] for k in report["killed"]]}
    # Encoded and rendered in the thread: `report` is this step's own copy (built above, on the loop).
    out.update(await asyncio.to_thread(_render_and_write, str(services.reports_dir), base, fmt, report))
    return out
