"""What each sddctl command does and prints. `run(args, out)` dispatches and returns the exit code.

Human output follows systemctl / fail2ban-client habits (aligned tables, relative times, colour only on a
terminal); `--json` prints the daemon's result as one JSON document instead.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from . import output, spool
from .client import Client, Event
from .output import Style, duration, relative_time, safe, table

TERMINAL = {"completed", "failed", "rolled_back", "cancelled", "interrupted"}


@dataclass
class Ctx:
    args: argparse.Namespace
    out: TextIO
    style: Style
    as_json: bool

    def client(self) -> Client:
        return Client(getattr(self.args, "socket", None), timeout=getattr(self.args, "timeout", 60.0))

    def call(self, method: str, **params: Any) -> Any:
        with self.client() as c:
            return c.call_params(method, params)

    def print(self, *lines: str) -> None:
        for line in lines:
            self.out.write(line + "\n")
        self.out.flush()

    def emit_json(self, value: Any) -> None:
        json.dump(value, self.out, indent=2, sort_keys=True, default=str)
        self.out.write("\n")
        self.out.flush()


def run(args: argparse.Namespace, out: TextIO) -> int:
    as_json = getattr(args, "json", False)
    ctx = Ctx(args, out, Style(output.colour_enabled(out) and not as_json), as_json)
    name = args.command if args.command != "quarantine" else f"quarantine-{args.quarantine_command}"
    return COMMANDS[name](ctx)


def _kv_value(text: str, option: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise spool.UsageError(f"{option} {text!r}: expected KEY=VALUE")
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    return key, parsed


# -- status and workflows -------------------------------------------------------------------------------------


def cmd_status(ctx: Ctx) -> int:
    status = ctx.call("status")
    if ctx.as_json:
        ctx.emit_json(status)
        return 0
    state = str(status.get("state", "unknown"))
    dot = ctx.style.paint("●", output.STATUS_COLOURS.get(state, "") if state != "running" else "green")
    uptime = status.get("uptime")
    header = f"{dot} sdd {ctx.style.status(state)}"
    details = [f"pid {status['pid']}" if status.get("pid") else "", f"up {duration(uptime)}" if uptime else ""]
    details = [d for d in details if d]
    if details:
        header += f" ({', '.join(details)})"
    pairs: list[tuple[str, str]] = [("Version", safe(status.get("version")))]
    pairs.append(("Active runs", safe(status.get("active_runs"))))
    queued = safe(status.get("queued_detections"))
    intake = status.get("intake") if isinstance(status.get("intake"), dict) else {}
    pairs.append(("Queued", queued + (" (intake paused: back-pressure)" if intake.get("paused") else "")))
    workflows = status.get("workflows")
    errors = status.get("workflow_errors") or []
    pairs.append(("Workflows", f"{safe(len(workflows) if isinstance(workflows, list) else workflows)} loaded"
                  + (ctx.style.paint(f", {len(errors)} with errors", "red") if errors else "")))
    stats = status.get("stats") if isinstance(status.get("stats"), dict) else {}
    if stats:
        pairs.append(("Detections", ", ".join(f"{stats[k]} {k.replace('_', ' ')}" for k in
                                              ("received", "rejected", "duplicates", "excluded", "no_match")
                                              if k in stats)))
        pairs.append(("Runs", ", ".join(f"{stats[k]} {k.split('_')[1]}" for k in ("runs_started", "runs_finished")
                                        if k in stats)))
    bus = status.get("bus")
    if isinstance(bus, dict):
        spec = bus.get("spec")
        pairs.append(("D-Bus", "off" if spec == "none" else
                      f"{safe(spec)} bus, " + ("connected" if bus.get("connected") else ctx.style.paint(
                          "disconnected", "yellow"))))
    for key, label in (("socket", "Socket"), ("spool", "Spool"), ("database", "Database")):
        if status.get(key):
            pairs.append((label, safe(status[key])))
    if status.get("user_mode"):
        pairs.append(("Mode", "user"))
    lines = output.key_values(pairs, indent="     ")
    lines += [f"     {ctx.style.paint('!', 'red')} {safe(e, 300)}" for e in errors[:10]]
    ctx.print(header, *lines)
    return 0


def _trigger_text(trigger: Any) -> str:
    if not isinstance(trigger, dict):
        return "on request"
    schedule = trigger.get("schedule")
    if isinstance(schedule, dict):
        return f"every {schedule['every']:g}s" if schedule.get("every") else f"at {schedule.get('at')}"
    types = trigger.get("types") or []
    text = ",".join(map(str, types)) or "any"
    if trigger.get("when"):
        text += " if " + str(trigger["when"])
    return text


def cmd_workflows(ctx: Ctx) -> int:
    result = ctx.call("workflows.list")
    if ctx.as_json:
        ctx.emit_json(result)
        return 0
    items = result.get("items", [])
    rows = [[safe(w["workflow_id"], 60), safe(w.get("name"), 50), str(w.get("steps", "")),
             safe(_trigger_text(w.get("trigger")), 60)] for w in items]
    ctx.print(*table(["ID", "NAME", "STEPS", "TRIGGER"], rows, ctx.style), "", f"{len(items)} workflows loaded.")
    return 0


def _step_lines(steps: list[Any], indent: str = "  ") -> list[str]:
    lines = []
    for step in steps:
        if not isinstance(step, dict):
            continue
        kind = step.get("type") or step.get("step_type") or "action"
        what = step.get("action") or step.get("workflow") or ""
        extra = []
        if step.get("on_failure"):
            extra.append(f"on_failure={step['on_failure']}")
        if step.get("condition"):
            extra.append(f"if {step['condition']}")
        lines.append(f"{indent}- {safe(step.get('step_id'), 60)}  [{kind}{' ' + str(what) if what else ''}]"
                     + (f"  {safe(', '.join(extra), 80)}" if extra else ""))
        for key in ("steps", "then", "else"):
            children = step.get(key)
            if isinstance(children, list):
                lines.extend(_step_lines(children, indent + "    "))
        if isinstance(step.get("step"), dict):
            lines.extend(_step_lines([step["step"]], indent + "    "))
    return lines


def cmd_show_workflow(ctx: Ctx) -> int:
    wf = ctx.call("workflows.get", workflow_id=ctx.args.workflow_id)
    if ctx.as_json:
        ctx.emit_json(wf)
        return 0
    pairs = [("Name", safe(wf.get("name"))), ("Description", safe(wf.get("description"), 100)),
             ("Trigger", safe(_trigger_text(wf.get("trigger_summary") or None), 100)),
             ("Rollback", "on failure" if wf.get("rollback_on_failure") else "no"),
             ("Timeout", duration(wf.get("timeout")) if wf.get("timeout") else "-"),
             ("Source", safe(wf.get("source")))]
    steps = wf.get("steps") or []
    ctx.print(ctx.style.bold(safe(wf.get("workflow_id"))), *output.key_values(pairs),
              f"  Steps ({len(steps)}):", *_step_lines(steps, "    "))
    return 0


def cmd_validate(ctx: Ctx) -> int:
    results = []
    with ctx.client() as client:
        for name in ctx.args.files:
            try:
                text = Path(name).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                results.append({"file": name, "valid": False, "errors": [f"{name}: cannot read: {exc}"]})
                continue
            result = client.call("workflows.validate", text=text, name=name)
            results.append({"file": name, **result})
    if ctx.as_json:
        ctx.emit_json({"valid": all(r["valid"] for r in results), "files": results})
    else:
        for r in results:
            if r["valid"]:
                ctx.print(f"{safe(r['file'])}: {ctx.style.paint('ok', 'green')} ({safe(r.get('workflow_id'))})")
            else:
                ctx.print(*(safe(e, 400) for e in r.get("errors") or [f"{r['file']}: invalid"]))
    return 0 if all(r["valid"] for r in results) else 1


# -- runs ---------------------------------------------------------------------------------------------------


def _step_line(ctx: Ctx, data: dict[str, Any]) -> str:
    status = str(data.get("status", ""))
    mark = ctx.style.paint(output.STATUS_MARKS.get(status, "·"), output.STATUS_COLOURS.get(status, ""))
    line = f"  {mark} {safe(data.get('step_id'), 80)}  {ctx.style.status(status)}  {duration(data.get('seconds'))}"
    if data.get("error"):
        line += f"  {safe(data['error'], 200)}"
    return line


def cmd_run(ctx: Ctx) -> int:
    a = ctx.args
    context = dict(_kv_value(s, "--set") for s in a.sets)
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
    """The run as stored; the daemon publishes run.finished before its history write is committed, so poll
    briefly until the stored status is final."""
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
            params[key] = float(value) if key == "since" and _is_number(value) else value
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


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


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


# -- detections, quarantine, reload, watch ------------------------------------------------------------------


def _detection(a: argparse.Namespace) -> dict[str, Any]:
    detection: dict[str, Any] = spool.clamav_detection(severity=a.severity or "high") if a.clamav else {}
    for key, value in (("type", a.type_), ("severity", a.severity), ("file_path", a.file_path),
                       ("threat_name", a.threat_name), ("id", a.detection_id), ("scanner", a.scanner)):
        if value is not None:
            detection[key] = value
    if a.pid is not None:
        detection["process_id"] = a.pid
        detection["process_start_time"] = spool.process_start_time(a.pid)
    for text in a.fields:
        key, value = _kv_value(text, "--field")
        detection[key] = value
    if not detection.get("type"):
        raise spool.UsageError("submit: --type is required (or --clamav)")
    detection.setdefault("detected_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return detection


def cmd_submit(ctx: Ctx) -> int:
    a = ctx.args
    detection = _detection(a)
    if a.api:
        result = ctx.call("detections.submit", detection=detection)
        if ctx.as_json:
            ctx.emit_json(result)
        else:
            ctx.print(f"Submitted detection {safe(result.get('detection_id'))}"
                      + (f" ({result['state']})" if result.get("state") else "") + ".")
        return 0
    where = spool.resolve_spool(a.spool, a.config)
    submitted = spool.write_detection(where, detection)
    if ctx.as_json:
        ctx.emit_json({"spool": str(where), "file": str(submitted.path), "detection": detection})
    else:
        ctx.print(f"Queued {submitted.path.name} in {where}.")
    return 0


def cmd_quarantine_list(ctx: Ctx) -> int:
    params: dict[str, Any] = {"limit": ctx.args.limit}
    if not ctx.args.all:
        params["restored"] = False
    page = ctx.call("quarantine.list", **params)
    if ctx.as_json:
        ctx.emit_json(page)
        return 0
    rows = [[safe(q.get("id"), 40), safe(q.get("original_path"), 80), safe(q.get("threat_name"), 40),
             _size(q.get("size")), relative_time(q.get("quarantined_at")),
             f"restored {relative_time(q['restored_at'])}" if q.get("restored_at") else ""]
            for q in page.get("items", [])]
    if not rows:
        ctx.print("The quarantine is empty.")
        return 0
    ctx.print(*table(["ID", "ORIGINAL PATH", "THREAT", "SIZE", "QUARANTINED", ""], rows, ctx.style))
    return 0


def _size(n: Any) -> str:
    if not isinstance(n, int):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return "-"


def cmd_quarantine_restore(ctx: Ctx) -> int:
    result = ctx.call("quarantine.restore", id=ctx.args.quarantine_id, on_conflict=ctx.args.on_conflict)
    if ctx.as_json:
        ctx.emit_json(result)
    else:
        to = result.get("restored_to") or result.get("path") or result.get("original_path")
        ctx.print(f"Restored {safe(ctx.args.quarantine_id)}" + (f" to {safe(to)}" if to else "") + ".")
    return 0


def cmd_reload(ctx: Ctx) -> int:
    result = ctx.call("reload")
    ok = bool(result.get("ok", True))
    if ctx.as_json:
        ctx.emit_json(result)
    else:
        count = result.get("workflows")
        count = len(count) if isinstance(count, (list, dict)) else count
        if ok:
            ctx.print(f"Reloaded: {count} workflows.")
        else:
            ctx.print("Reload refused; the previous workflows stay active:",
                      *(f"  {safe(e, 400)}" for e in result.get("errors") or []))
    return 0 if ok else 1


def cmd_watch(ctx: Ctx) -> int:
    with ctx.client().subscribe(ctx.args.events) as events:
        if not ctx.as_json:
            ctx.print(f"Watching sdd events ({', '.join(ctx.args.events or ['all'])}); Ctrl-C to stop.")
        try:
            for event in events:
                if ctx.as_json:
                    ctx.out.write(json.dumps({"event": event.name, "data": event.data, "time": time.time()},
                                             sort_keys=True, default=str) + "\n")
                    ctx.out.flush()
                else:
                    ctx.print(_event_line(ctx, event))
        except KeyboardInterrupt:
            return 0
    return 0


def _event_line(ctx: Ctx, event: Event) -> str:
    stamp = time.strftime("%H:%M:%S")
    data = dict(event.data)
    status = data.pop("status", None)
    head = f"{stamp}  {ctx.style.paint(f'{event.name:<18}', 'bold')}"
    if status is not None:
        head += f" {ctx.style.status(status)}"
    return head + "  " + " ".join(f"{k}={output.compact(v, 80)}" for k, v in data.items())


COMMANDS: dict[str, Callable[[Ctx], int]] = {
    "status": cmd_status, "workflows": cmd_workflows, "show-workflow": cmd_show_workflow,
    "validate": cmd_validate, "run": cmd_run, "history": cmd_history, "show": cmd_show, "stats": cmd_stats,
    "cancel": cmd_cancel, "submit": cmd_submit, "quarantine-list": cmd_quarantine_list,
    "quarantine-restore": cmd_quarantine_restore, "reload": cmd_reload, "watch": cmd_watch,
}

__all__ = ["COMMANDS", "Ctx", "run"]
