"""sddctl's run commands: run (with --wait, --dry-run, --detection), history, show (a run's timeline, or a
detection with its runs), stats, cancel."""

from __future__ import annotations

import datetime
import math
import time
from typing import Any

from . import output, spool
from .cli_context import TERMINAL, Ctx, kv_value
from .client import Client, Event
from .errors import ApiError
from .output import duration, relative_time, safe, table


def _step_line(ctx: Ctx, data: dict[str, Any]) -> str:
    """`  ✓ quarantine      completed  0.01s`: step and status in columns wide enough for most workflows."""
    status = str(data.get("status", ""))
    mark = ctx.style.paint(output.STATUS_MARKS.get(status, "·"), output.STATUS_COLOURS.get(status, ""))
    step = safe(data.get("step_id"), 80)
    line = (f"  {mark} {step}{' ' * max(0, 20 - len(step))}  {ctx.style.status(status)}"
            f"{' ' * max(0, 11 - len(status))}  {duration(data.get('seconds'))}")
    if data.get("error"):
        line += f"  {safe(data['error'], 200)}"
    return line


def cmd_run(ctx: Ctx) -> int:
    a = ctx.args
    context = dict(kv_value(s, "--set") for s in a.sets)
    params: dict[str, Any] = {"workflow_id": a.workflow_id, "context": context, "dry_run": a.dry_run}
    if a.detection:
        params["detection"] = spool.read_detection_file(a.detection)
    if a.dry_run or not a.wait:
        result = ctx.call("runs.start", **params)
        if ctx.as_json:
            ctx.emit_json(result)
        else:
            _print_started(ctx, result)
        return 0
    with ctx.client() as client, client.subscribe(["step.finished", "run.finished"]) as events:
        result = client.call_params("runs.start", params)
        run_id = result.get("run_id")
        if not ctx.as_json:
            _print_started(ctx, result)
        outcome = result.get("status") if result.get("status") in TERMINAL else None
        for event in ([] if outcome or run_id is None else events):
            outcome = _follow(ctx, client, event, run_id)
            if outcome:
                break
        run = _settled_run(client, run_id) if run_id else result
    status = (run or {}).get("status") or outcome
    if ctx.as_json:
        ctx.emit_json(run)
    else:
        seconds = (run or {}).get("duration")
        ctx.print(f"Run {safe(run_id)} {ctx.style.status(status)} after {duration(seconds)}"
                  + (f": {safe(run.get('error'), 300)}" if run and run.get("error") else ""))
    return 0 if status == "completed" else 1


_RUNS = {True: "yes", False: "no", None: "maybe"}


def _print_started(ctx: Ctx, result: dict[str, Any]) -> None:
    run_id = result.get("run_id")
    plan = result.get("plan")
    if isinstance(plan, list):
        rows = [[safe(s.get("step_id"), 60), _RUNS.get(s.get("would_run"), "?"),
                 safe(s.get("action") or s.get("step_type"), 40) + (" (irreversible)" if s.get("irreversible") else ""),
                 safe(s.get("reason"), 80)] for s in plan]
        ctx.print(f"Dry run of {safe(result.get('workflow_id'))}: nothing was run or recorded.",
                  *table(["STEP", "RUNS", "ACTION", "WHY"], rows, ctx.style))
    if run_id:
        ctx.print(f"Started run {ctx.style.bold(safe(run_id))} of {safe(result.get('workflow_id'))}"
                  + (f" for detection {safe(result['detection_id'])}" if result.get("detection_id") else ""))


def _follow(ctx: Ctx, client: Client, event: Event, run_id: str) -> str | None:
    """Prints a step as it finishes; returns the run's status once it has finished."""
    if event.name == "lagged":
        run = client.call("runs.get", run_id=run_id)  # events were lost: ask where the run is
        return run.get("status") if run.get("status") in TERMINAL else None
    if event.data.get("run_id") != run_id:
        return None
    if event.name == "step.finished" and not ctx.as_json:
        ctx.print(_step_line(ctx, event.data))
    if event.name == "run.finished":
        return str(event.data.get("status"))
    return None


def _settled_run(client: Client, run_id: str, deadline: float = 10.0) -> dict[str, Any]:
    """The run as stored. The daemon publishes run.finished after the final status is committed; the short
    poll covers a daemon that lost events (`lagged`) or an older one that published first."""
    end = time.monotonic() + deadline
    while True:
        run = client.call("runs.get", run_id=run_id)
        if run.get("status") in TERMINAL or time.monotonic() > end:
            return run
        time.sleep(0.02)


def cmd_history(ctx: Ctx) -> int:
    a = ctx.args
    params: dict[str, Any] = {"limit": a.limit}
    for key, value in (("workflow", a.workflow), ("status", a.status), ("since", a.since), ("cursor", a.cursor),
                       ("detection", a.detection)):
        if value is not None:
            params[key] = value
    page = ctx.call("runs.list", **params)
    if ctx.as_json:
        ctx.emit_json(page)
        return 0
    rows = [[safe(r["run_id"], 40), safe(r.get("workflow_id"), 40),
             ctx.style.status("waiting" if r.get("waiting") else r.get("status")),
             relative_time(r.get("started_at")), duration(r.get("duration")), safe(r.get("trigger"), 12),
             safe(r.get("detection_id"), 20)] for r in page.get("items", [])]
    if not rows:
        ctx.print("No runs" + (f" of detection {safe(a.detection)}." if a.detection else "."))
        return 0
    ctx.print(*table(["RUN", "WORKFLOW", "STATUS", "STARTED", "DURATION", "TRIGGER", "DETECTION"], rows, ctx.style))
    if page.get("cursor"):
        ctx.print("", f"More: sddctl history --cursor {page['cursor']}")
    return 0


_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SINCE_FORMS = "an age (90s, 2m, 30min, 2h, 7d, 1w), epoch seconds, or an ISO 8601 time"


def since_value(text: str, now: float | None = None) -> float | str:
    """`--since`: epoch seconds ("1764064800"), an age ("90s", "2m", "2h", "7d"), or an ISO 8601 time (passed
    on as it is, for the daemon to read in its own time zone rules); ValueError for anything else."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(value):
            return value
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number):]
    if number and unit in _UNITS:
        try:
            age = float(number)
        except ValueError:
            age = -1.0
        if math.isfinite(age) and age >= 0:
            return (time.time() if now is None else now) - age * _UNITS[unit]
    try:
        datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected {SINCE_FORMS}, got {text!r}") from None
    return text


def _detection_ident(ctx: Ctx, client: Client, ident: str) -> dict[str, Any] | None:
    try:
        return client.call("detections.get", id=ident)
    except ApiError as exc:
        if exc.code == "not_found":
            return None
        raise


def cmd_show(ctx: Ctx) -> int:
    ident = ctx.args.run_id
    with ctx.client() as client:
        if ctx.args.detection:
            detection = client.call("detections.get", id=ident)
            return _show_detection(ctx, detection)
        try:
            run = client.call("runs.get", run_id=ident)
        except ApiError as exc:
            if exc.code != "not_found":
                raise
            detection = _detection_ident(ctx, client, ident)
            if detection is None:
                raise ApiError("not_found", f"no run and no detection {ident!r}") from None
            return _show_detection(ctx, detection)
    if ctx.as_json:
        ctx.emit_json(run)
        return 0
    start = run.get("started_at")
    det = safe(run.get("detection_id"))
    if run.get("external_id") is not None:
        det += f" (producer's id {safe(run['external_id'], 80)})"
    pairs = [("Workflow", safe(run.get("workflow_id"))), ("Status", ctx.style.status(run.get("status"))),
             ("Started", f"{output.clock(start)} ({relative_time(start)})"),
             ("Finished", output.clock(run.get("finished_at"))), ("Duration", duration(run.get("duration"))),
             ("Trigger", safe(run.get("trigger"))), ("Detection", det)]
    if run.get("dry_run"):
        pairs.append(("Dry run", "yes"))
    if run.get("error"):
        pairs.append(("Error", safe(run["error"], 300)))
    ctx.print(f"Run {ctx.style.bold(safe(run.get('run_id')))}", *output.key_values(pairs), "", "  Timeline:")
    steps = sorted(run.get("steps") or [], key=lambda s: (s.get("started_at") or float("inf"), s.get("step_id")))
    rows = []
    for s in steps:
        offset = (s["started_at"] - start) if isinstance(s.get("started_at"), (int, float)) and start else None
        took = (s["finished_at"] - s["started_at"]) if s.get("finished_at") and s.get("started_at") else None
        status = str(s.get("status"))
        mark = ctx.style.paint(output.STATUS_MARKS.get(status, "·"), output.STATUS_COLOURS.get(status, ""))
        name = safe(s.get("step_id"), 60) + (" (rollback)" if s.get("phase") == "rollback" else "")
        attempts = s.get("attempts") or 0
        note = safe(s.get("error"), 120) if s.get("error") else output.compact(s.get("result"), 60)
        if status == "waiting" and isinstance(s.get("result"), dict):
            since = s["result"].get("since")
            note = safe(s["result"].get("reason"), 120) + (f" (since {relative_time(since)})" if since else "")
        rows.append([f"+{offset:.3f}s" if offset is not None else "-", mark, name, ctx.style.status(status),
                     f"{attempts}×", duration(took), note])
    if rows:
        ctx.print(*("    " + line for line in table(["AT", "", "STEP", "STATUS", "TRIES", "TOOK", "RESULT"],
                                                     rows, ctx.style)))
    else:
        ctx.print("    (no steps recorded)")
    return 0


def _show_detection(ctx: Ctx, d: dict[str, Any]) -> int:
    if ctx.as_json:
        ctx.emit_json(d)
        return 0
    pairs = [("Producer's id", safe(d.get("external_id"), 120)), ("Type", safe(d.get("type"))),
             ("Severity", safe(d.get("severity"))), ("File", safe(d.get("file_path"), 200)),
             ("Threat", safe(d.get("threat_name"), 120)),
             ("Received", f"{output.clock(d.get('received_at'))} ({relative_time(d.get('received_at'))})"),
             ("State", ctx.style.status(d.get("state")))]
    if d.get("note"):
        pairs.append(("Note", safe(d["note"], 300)))
    if d.get("duplicate_of"):
        pairs.append(("Duplicate of", safe(d["duplicate_of"])))
    ctx.print(f"Detection {ctx.style.bold(safe(d.get('detection_id')))}", *output.key_values(pairs), "", "  Runs:")
    runs = d.get("runs") or []
    rows = [[safe(r.get("run_id"), 40), safe(r.get("workflow_id"), 40), ctx.style.status(r.get("status")),
             relative_time(r.get("started_at")), duration(r.get("duration"))] for r in runs]
    if rows:
        ctx.print(*("    " + line for line in table(["RUN", "WORKFLOW", "STATUS", "STARTED", "DURATION"], rows,
                                                     ctx.style)))
    else:
        ctx.print("    (none)")
    return 0


def cmd_stats(ctx: Ctx) -> int:
    result = ctx.call("runs.stats")
    if ctx.as_json:
        ctx.emit_json(result)
        return 0
    rows = []
    for s in result.get("items", []):
        last = s.get("last_run") or {}
        # RUNS = OK + FAILED + ROLLED BACK + CANCELLED + INTERRUPTED + ACTIVE: every column, so they add up.
        rows.append([safe(s["workflow_id"], 40), str(s.get("runs", 0)), str(s.get("completed", 0)),
                     str(s.get("failed", 0)), str(s.get("rolled_back", 0)), str(s.get("cancelled", 0)),
                     str(s.get("interrupted", 0)), str(s.get("active", 0)), duration(s.get("mean_duration")),
                     duration(s.get("p95_duration")),
                     f"{relative_time(last.get('started_at'))} {ctx.style.status(last.get('status'))}" if last else "-"])
    if not rows:
        ctx.print("No runs yet.")
        return 0
    ctx.print(*table(["WORKFLOW", "RUNS", "OK", "FAILED", "ROLLED BACK", "CANCELLED", "INTERRUPTED", "ACTIVE", "MEAN",
                      "P95", "LAST RUN"], rows, ctx.style))
    return 0


def cmd_cancel(ctx: Ctx) -> int:
    result = ctx.call("runs.cancel", run_id=ctx.args.run_id)
    if ctx.as_json:
        ctx.emit_json(result)
    else:
        ctx.print(f"Cancelled run {safe(result.get('run_id') or ctx.args.run_id)}.")
    return 0


__all__ = ["cmd_cancel", "cmd_history", "cmd_run", "cmd_show", "cmd_stats"]
