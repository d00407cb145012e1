"""sddctl's run commands: run (with --wait), history, show (timeline), stats, cancel."""

from __future__ import annotations

import time
from typing import Any

from . import output
from .cli_context import TERMINAL, Ctx, kv_value
from .client import Client, Event
from .output import duration, relative_time, safe, table


def _step_line(ctx: Ctx, data: dict[str, Any]) -> str:
    status = str(data.get("status", ""))
    mark = ctx.style.paint(output.STATUS_MARKS.get(status, "·"), output.STATUS_COLOURS.get(status, ""))
    line = f"  {mark} {safe(data.get('step_id'), 80)}  {ctx.style.status(status)}  {duration(data.get('seconds'))}"
    if data.get("error"):
        line += f"  {safe(data['error'], 200)}"
    return line


def cmd_run(ctx: Ctx) -> int:
    a = ctx.args
    context = dict(kv_value(s, "--set") for s in a.sets)
    if not a.wait:
        result = ctx.call("runs.start", workflow_id=a.workflow_id, context=context, dry_run=a.dry_run)
        if ctx.as_json:
            ctx.emit_json(result)
        else:
            _print_started(ctx, result)
        return 0
    with ctx.client() as client, client.subscribe(["step.finished", "run.finished"]) as events:
        result = client.call("runs.start", workflow_id=a.workflow_id, context=context, dry_run=a.dry_run)
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


def _print_started(ctx: Ctx, result: dict[str, Any]) -> None:
    run_id = result.get("run_id")
    plan = result.get("plan")
    if isinstance(plan, list):
        rows = [[safe(s.get("step_id"), 60), "yes" if s.get("would_run") else "no", safe(s.get("action"), 40),
                 "irreversible" if s.get("irreversible") else "", safe(s.get("reason"), 60)] for s in plan]
        ctx.print(f"Dry run of {safe(result.get('workflow_id'))}: nothing was changed.",
                  *table(["STEP", "RUNS", "ACTION", "", "WHY"], rows, ctx.style))
    if run_id:
        ctx.print(f"Started run {ctx.style.bold(safe(run_id))} of {safe(result.get('workflow_id'))}"
                  + (" (dry run)" if result.get("dry_run") else ""))


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
    for key, value in (("workflow", a.workflow), ("status", a.status), ("since", a.since), ("cursor", a.cursor)):
        if value is not None:
            params[key] = since_value(value) if key == "since" else value
    page = ctx.call("runs.list", **params)
    if ctx.as_json:
        ctx.emit_json(page)
        return 0
    rows = [[safe(r["run_id"], 40), safe(r.get("workflow_id"), 40), ctx.style.status(r.get("status")),
             relative_time(r.get("started_at")), duration(r.get("duration")), safe(r.get("trigger"), 12),
             safe(r.get("detection_id"), 20)] for r in page.get("items", [])]
    if not rows:
        ctx.print("No runs.")
        return 0
    ctx.print(*table(["RUN", "WORKFLOW", "STATUS", "STARTED", "DURATION", "TRIGGER", "DETECTION"], rows, ctx.style))
    if page.get("cursor"):
        ctx.print("", f"More: sddctl history --cursor {page['cursor']}")
    return 0


_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def since_value(text: str, now: float | None = None) -> float | str:
    """`--since`: epoch seconds ("1764064800"), an age ("30m", "2h", "7d"), or an ISO 8601 time passed on
    as it is for the daemon to parse."""
    try:
        return float(text)
    except ValueError:
        pass
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number):]
    if number and unit in _UNITS:
        try:
            return (time.time() if now is None else now) - float(number) * _UNITS[unit]
        except ValueError:
            pass
    return text


def cmd_show(ctx: Ctx) -> int:
    run = ctx.call("runs.get", run_id=ctx.args.run_id)
    if ctx.as_json:
        ctx.emit_json(run)
        return 0
    start = run.get("started_at")
    pairs = [("Workflow", safe(run.get("workflow_id"))), ("Status", ctx.style.status(run.get("status"))),
             ("Started", f"{output.clock(start)} ({relative_time(start)})"),
             ("Finished", output.clock(run.get("finished_at"))), ("Duration", duration(run.get("duration"))),
             ("Trigger", safe(run.get("trigger"))), ("Detection", safe(run.get("detection_id")))]
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
        rows.append([f"+{offset:.3f}s" if offset is not None else "-", mark, name, ctx.style.status(status),
                     f"{attempts}×", duration(took), note])
    if rows:
        ctx.print(*("    " + line for line in table(["AT", "", "STEP", "STATUS", "TRIES", "TOOK", "RESULT"],
                                                     rows, ctx.style)))
    else:
        ctx.print("    (no steps recorded)")
    return 0


def cmd_stats(ctx: Ctx) -> int:
    result = ctx.call("runs.stats")
    if ctx.as_json:
        ctx.emit_json(result)
        return 0
    rows = []
    for s in result.get("items", []):
        last = s.get("last_run") or {}
        rows.append([safe(s["workflow_id"], 40), str(s.get("runs", 0)), str(s.get("completed", 0)),
                     str(s.get("failed", 0)), str(s.get("rolled_back", 0)), duration(s.get("mean_duration")),
                     duration(s.get("p95_duration")),
                     f"{relative_time(last.get('started_at'))} {ctx.style.status(last.get('status'))}" if last else "-"])
    if not rows:
        ctx.print("No runs yet.")
        return 0
    ctx.print(*table(["WORKFLOW", "RUNS", "OK", "FAILED", "ROLLED BACK", "MEAN", "P95", "LAST RUN"], rows, ctx.style))
    return 0


def cmd_cancel(ctx: Ctx) -> int:
    result = ctx.call("runs.cancel", run_id=ctx.args.run_id)
    if ctx.as_json:
        ctx.emit_json(result)
    else:
        ctx.print(f"Cancelled run {safe(ctx.args.run_id)}.")
    return 0


__all__ = ["cmd_cancel", "cmd_history", "cmd_run", "cmd_show", "cmd_stats"]
