"""What each sddctl command does and prints. `run(args, out)` dispatches and returns the exit code.

Human output follows systemctl / fail2ban-client habits (aligned tables, relative times, colour only on a
terminal); `--json` prints the daemon's result as one JSON document instead.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from . import output, spool
from .cli_context import Ctx, kv_value
from .client import Event
from .errors import DaemonUnreachable
from .output import Style, duration, relative_time, safe, table
from .run_commands import cmd_cancel, cmd_history, cmd_run, cmd_show, cmd_stats
from .validate_detection import cmd_validate_detection


def run(args: argparse.Namespace, out: TextIO) -> int:
    as_json = getattr(args, "json", False)
    ctx = Ctx(args, out, Style(output.colour_enabled(out) and not as_json), as_json)
    name = args.command if args.command != "quarantine" else f"quarantine-{args.quarantine_command}"
    return COMMANDS[name](ctx)


# -- status and workflows -------------------------------------------------------------------------------------


def _export_lines(ctx: Ctx, export: Any) -> list[tuple[str, str]]:
    """`Export: nats 0 waiting (up), file 12 waiting (down: ...)` — the outbox depth per sink."""
    if not isinstance(export, dict) or not isinstance(export.get("sinks"), dict) or not export["sinks"]:
        return []
    parts = []
    for name, sink in export["sinks"].items():
        sink = sink if isinstance(sink, dict) else {}
        state = safe(sink.get("state"))
        text = f"{safe(name)} {safe(sink.get('depth'))} waiting ({state}"
        if state != "up" and sink.get("last_error"):
            text += f": {safe(sink.get('last_error'), 120)}"
        parts.append(ctx.style.paint(text + ")", "" if state == "up" else "yellow"))
    out = [("Export", ", ".join(parts))]
    if export.get("dropped"):
        out.append(("Dropped", ctx.style.paint(f"{safe(export['dropped'])} events (the outbox was full)", "red")))
    return out


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
    pairs.extend(_export_lines(ctx, status.get("export")))
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
        key, value = kv_value(text, "--field")
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
    extra = {"force": True} if ctx.args.force else {}
    result = ctx.call("quarantine.restore", id=ctx.args.quarantine_id, on_conflict=ctx.args.on_conflict, **extra)
    if ctx.as_json:
        ctx.emit_json(result)
    else:
        to = result.get("restored_path") or result.get("restored_to") or result.get("original_path")
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
    client = ctx.client()
    with client.subscribe(ctx.args.events) as events:
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
    # The stream ended without Ctrl-C: the daemon stopped (or restarted).
    raise DaemonUnreachable(str(client.socket_path), "the daemon closed the event stream")


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
    "validate-detection": cmd_validate_detection,
}

__all__ = ["COMMANDS", "run"]
