"""What each sddctl command does and prints. `run(args, out)` dispatches and returns the exit code.

Human output follows systemctl / fail2ban-client habits (aligned tables, relative times, colour only on a
terminal); `--json` prints the daemon's result as one JSON document instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from . import events, output, spool
from .cli_context import Ctx, kv_value
from .client import Event, EventStream
from .errors import ApiError, ClientError, DaemonUnreachable
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


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _guard_lines(ctx: Ctx, guards: Any) -> list[tuple[str, str]]:
    """Steps a rate limit holds (count and action) and open breakers; nothing when no guard holds anything."""
    guards = _mapping(guards)
    lines: list[tuple[str, str]] = []
    limits = _mapping(guards.get("rate_limits"))
    for action, count in sorted(_mapping(guards.get("waiting")).items()):
        limit = _mapping(limits.get(action))
        lines.append(("Waiting", ctx.style.paint(f"{safe(count)} step(s) for {safe(action, 60)}", "yellow")
                      + f" (rate limit {safe(limit.get('limit'))} per {safe(limit.get('per_seconds'))} s)"))
    for key, b in sorted(_mapping(guards.get("breakers")).items()):
        if isinstance(b, dict) and b.get("state") != "closed":
            lines.append(("Breaker", ctx.style.paint(f"{safe(key, 80)} {safe(b.get('state'))}", "red")
                          + f" ({safe(b.get('last_error'), 120)})"))
    return lines


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
    pairs.append(("Active runs", safe(status.get("active_runs")) + _slot_text(status.get("run_slots"))))
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
    pairs.extend(_guard_lines(ctx, status.get("guards")))
    scans = status.get("scans") if isinstance(status.get("scans"), dict) else {}
    if scans.get("running") or scans.get("waiting"):
        line = (f"{safe(scans.get('running'))} running, {safe(scans.get('waiting'))} waiting "
                f"(at most {safe(scans.get('at_once'))} at once)")
        pairs.append(("Scans", line))
    pairs.extend(_export_lines(ctx, status.get("export")))
    full_since = status.get("database_full_since")
    full = isinstance(full_since, (int, float)) and not isinstance(full_since, bool)
    for key, label in (("socket", "Socket"), ("spool", "Spool"), ("database", "Database")):
        if status.get(key):
            pairs.append((label, safe(status[key]) + (ctx.style.paint(
                f" (its disk is full, since {relative_time(full_since)}: writes are held and tried again, "
                "new detections wait in the spool)", "red") if key == "database" and full else "")))
    if status.get("user_mode"):
        pairs.append(("Mode", "user"))
    lines = output.key_values(pairs, indent="     ")
    lines += [f"     {ctx.style.paint('!', 'red')} {safe(e, 300)}" for e in errors[:10]]
    ctx.print(header, *lines)
    return 0


def _slot_text(slots: Any) -> str:
    """" (2 of 4 slots; 9 waiting on others, 1 held by a guard)": runs that only wait lend their slot."""
    if not isinstance(slots, dict) or not isinstance(slots.get("limit"), int):
        return ""
    parts = [f"{n} {label}" for key, label in (("waiting_elsewhere", "waiting on others"),
                                               ("held_by_guard", "held by a guard"), ("recording", "being recorded"))
             if isinstance(n := slots.get(key), int) and n > 0]
    return f" ({safe(slots.get('busy'))} of {safe(slots['limit'])} slots" + ("; " + ", ".join(parts) if parts else "") + ")"


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
    if a.file_path is not None:
        # The daemon resolves nothing relative to sddctl's directory: the path it gets is the one meant.
        detection["file_path"] = os.path.abspath(a.file_path)
    if a.pid is not None:
        detection["process_id"] = a.pid
        detection["process_start_time"] = spool.process_start_time(a.pid)
    for text in a.fields:
        key, value = kv_value(text, "--field")
        detection[key] = value
    if not detection.get("type"):
        raise spool.UsageError("submit: --type is required (or --clamav)")
    if detection.get("id") is None:
        detection["id"] = spool.new_detection_id()  # so the producer can follow what it sent
    detection.setdefault("detected_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return detection


_FOLLOW = [events.DETECTION_RECEIVED, events.DETECTION_REJECTED, events.DETECTION_DUPLICATE,
           events.DETECTION_EXCLUDED, events.DETECTION_MATCHED, events.DETECTION_NO_MATCH, events.RUN_STARTED,
           events.RUN_FINISHED]


def cmd_submit(ctx: Ctx) -> int:
    a = ctx.args
    detection = _detection(a)
    ident = str(detection["id"])
    stream = None
    if a.wait:
        try:  # subscribed before the detection exists, so none of its events can be missed
            stream = ctx.client().subscribe(_FOLLOW)
        except DaemonUnreachable as exc:
            unreachable: DaemonUnreachable | None = exc
        else:
            unreachable = None
    try:
        if a.api:
            result = ctx.call("detections.submit", detection=detection)
            written = {"id": ident, "detection_id": result.get("detection_id"), "state": result.get("state"),
                       "detection": detection}
            where = None
        else:
            where = spool.resolve_spool(a.spool, a.config)
            submitted = spool.write_detection(where, detection)
            written = {"id": ident, "spool": str(where), "file": str(submitted.path), "detection": detection}
        if not ctx.as_json:
            if where is None:
                ctx.print(f"Submitted detection {safe(ident)} (sdd's id {safe(written['detection_id'])}, "
                          f"{safe(written['state'])}).")
            else:
                ctx.print(f"Queued detection {safe(ident)} in {safe(where)} ({safe(submitted.path.name)}).")
        if not a.wait:
            if ctx.as_json:
                ctx.emit_json(written)
            return 0
        if stream is None:
            assert unreachable is not None
            raise DaemonUnreachable(unreachable.socket_path, f"{unreachable.reason}; the detection is queued, "
                                    "but its outcome cannot be followed")
        with stream:
            outcome = _follow_detection(ctx, stream, ident, None if where is None else submitted.path.name)
    finally:
        if stream is not None:
            stream.close()
    if ctx.as_json:
        ctx.emit_json({**written, **outcome})
    else:
        ctx.print(_outcome_line(outcome))
    return 0 if outcome["ok"] else 1


def _follow_detection(ctx: Ctx, stream: EventStream, ident: str, spool_name: str | None) -> dict[str, Any]:
    """Reads events until the detection `ident` has an outcome: rejected, duplicate, excluded, unmatched, or
    every run it started finished. Each finished run is printed as it comes."""
    did: str | None = None
    runs: dict[str, str | None] = {}   # run id → final status (None while running)
    started: list[str] | None = None   # the run ids, once the daemon said which
    for event in stream:
        data = event.data
        if event.name == events.LAGGED:
            raise ClientError(f"events were lost while following detection {ident} (the daemon was too busy); "
                              f"see `sddctl show {ident}`")
        if event.name == events.DETECTION_REJECTED and spool_name is not None and data.get("name") == spool_name:
            return {"ok": False, "state": "rejected", "reason": data.get("reason"), "runs": {}}
        if event.name in (events.DETECTION_RECEIVED, events.DETECTION_DUPLICATE) and data.get("external_id") == ident \
                and did is None:
            did = str(data.get("detection_id"))
            if event.name == events.DETECTION_DUPLICATE:
                return {"ok": False, "state": "duplicate", "detection_id": did, "of": data.get("of"), "runs": {}}
            continue
        if did is None or data.get("detection_id") != did and event.name != events.RUN_FINISHED:
            continue
        if event.name in (events.DETECTION_DUPLICATE, events.DETECTION_EXCLUDED, events.DETECTION_NO_MATCH):
            state = {events.DETECTION_DUPLICATE: "duplicate", events.DETECTION_EXCLUDED: "excluded",
                     events.DETECTION_NO_MATCH: "no_match"}[event.name]
            return {"ok": False, "state": state, "detection_id": did, "reason": data.get("reason"),
                    "of": data.get("of"), "runs": {}}
        if event.name == events.DETECTION_MATCHED:
            started = [str(r) for r in data.get("runs") or []]
            for run_id in started:
                runs.setdefault(run_id, None)
        elif event.name == events.RUN_STARTED:
            runs.setdefault(str(data.get("run_id")), None)
        elif event.name == events.RUN_FINISHED and data.get("run_id") in runs:
            runs[str(data["run_id"])] = str(data.get("status"))
            if not ctx.as_json:
                ctx.print(f"  run {safe(data.get('run_id'))} of {safe(data.get('workflow_id'))} "
                          f"{ctx.style.status(data.get('status'))} after {duration(data.get('seconds'))}"
                          + (f": {safe(data['error'], 200)}" if data.get("error") else ""))
        if started is not None and all(runs.get(r) is not None for r in started):
            ok = all(status == "completed" for status in runs.values())
            return {"ok": ok, "state": "matched", "detection_id": did, "runs": runs}
    raise DaemonUnreachable("sdd", "the daemon closed the event stream before the detection's runs finished")


def _outcome_line(outcome: dict[str, Any]) -> str:
    state = outcome["state"]
    if state == "rejected":
        return f"Rejected: {safe(outcome.get('reason'), 300)}"
    did = safe(outcome.get("detection_id"))
    if state == "duplicate":
        return f"Detection {did} is a duplicate of detection {safe(outcome.get('of'))}: no run started."
    if state == "excluded":
        return f"Detection {did} is excluded: no run started."
    if state == "no_match":
        return f"Detection {did} matched no workflow ({safe(outcome.get('reason'), 200)}): no run started."
    runs = outcome["runs"]
    done = sum(1 for s in runs.values() if s == "completed")
    return f"Detection {did}: {done} of {len(runs)} run(s) completed."


def cmd_quarantine_list(ctx: Ctx) -> int:
    params: dict[str, Any] = {"limit": ctx.args.limit}
    if not ctx.args.all:
        params["restored"] = False
    page = ctx.call("quarantine.list", **params)
    if ctx.as_json:
        ctx.emit_json(page)
        return 0
    rows = []
    for q in page.get("items", []):
        row = [safe(q.get("id"), 40), safe(q.get("original_path"), 80), safe(q.get("threat_name"), 40),
               _size(q.get("size")), relative_time(q.get("quarantined_at"))]
        if ctx.args.all:
            row.append(f"{relative_time(q['restored_at'])} to {safe(q.get('restored_to'), 80)}"
                       if q.get("restored_at") else "-")
        rows.append(row)
    if not rows:
        ctx.print("The quarantine is empty." if ctx.args.all else "Nothing is quarantined.")
        return 0
    headers = ["ID", "ORIGINAL PATH", "THREAT", "SIZE", "QUARANTINED"] + (["RESTORED"] if ctx.args.all else [])
    ctx.print(*table(headers, rows, ctx.style))
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
    qid = ctx.args.quarantine_id
    try:
        extra = {"force": True} if ctx.args.force else {}
        result = ctx.call("quarantine.restore", id=qid, on_conflict=ctx.args.on_conflict, **extra)
    except ApiError as exc:
        # The daemon speaks of the API's parameter; say the option this command takes.
        raise ApiError(exc.code, re.sub(r"\bon_conflict[:=] ?(\w+)", r"--on-conflict \1", exc.message)) from None
    if ctx.as_json:
        ctx.emit_json(result)
        return 0
    to = result.get("restored_path") or result.get("restored_to")
    if result.get("already_restored"):
        ctx.print(f"{safe(qid)} was already restored" + (f", to {safe(to)}" if to else "") + "; nothing to do.")
    elif to and to != result.get("original_path"):
        ctx.print(f"Restored {safe(qid)} to {safe(to)} (something else is at {safe(result.get('original_path'))}).")
    else:
        ctx.print(f"Restored {safe(qid)}" + (f" to {safe(to)}" if to else "") + ".")
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
    with client.subscribe(ctx.args.events) as stream:
        if not ctx.as_json:
            ctx.print(f"Watching sdd events ({', '.join(ctx.args.events or ['all'])}); Ctrl-C to stop.")
        try:
            for event in stream:
                if ctx.as_json:
                    ctx.out.write(json.dumps({"event": event.name, "data": event.data, "time": time.time()},
                                             sort_keys=True, default=str) + "\n")
                    ctx.out.flush()
                else:
                    ctx.print(event_line(ctx.style, event))
        except KeyboardInterrupt:
            return 0
    # The stream ended without Ctrl-C: the daemon stopped (or restarted).
    raise DaemonUnreachable(str(client.socket_path), "the daemon closed the event stream")


_NAME_WIDTH = max(len(n) for n in (*events.EVENT_NAMES, events.LAGGED))
_STATUS_WIDTH = max(len(s) for s in ("completed", "rolled_back", "interrupted", "cancelled", "skipped"))
# What a human line shows of each event, in this order (the rest is in --json).
_FIELDS = {
    events.DETECTION_RECEIVED: ("detection_id", "external_id", "type", "severity", "file_path"),
    events.DETECTION_REJECTED: ("name", "reason"),
    events.DETECTION_DUPLICATE: ("detection_id", "external_id", "of"),
    events.DETECTION_EXCLUDED: ("detection_id", "external_id"),
    events.DETECTION_MATCHED: ("detection_id", "external_id", "runs"),
    events.DETECTION_NO_MATCH: ("detection_id", "external_id", "reason"),
    events.RUN_STARTED: ("run_id", "workflow_id", "detection_id", "external_id"),
    events.STEP_STARTED: ("run_id", "step_id", "attempt"),
    events.STEP_FINISHED: ("run_id", "step_id", "seconds", "error"),
    events.RUN_FINISHED: ("run_id", "workflow_id", "seconds", "detection_id", "external_id", "error"),
    events.NOTIFICATION: ("urgency", "title", "body"),
    events.STATUS_CHANGED: ("state", "active_runs", "queued_detections"),
    events.LAGGED: ("missed",),
}
_SHORT = {"detection_id": "detection", "external_id": "id", "workflow_id": "workflow", "run_id": "run",
          "step_id": "step", "seconds": "took", "queued_detections": "queued", "active_runs": "active"}


def event_line(style: Style, event: Event, now: float | None = None) -> str:
    """One aligned line per event: time, name and status in fixed columns, then the fields that matter."""
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    data = event.data
    status = data.get("status")
    cells = [style.paint(f"{event.name:<{_NAME_WIDTH}}", "bold"),
             style.status(status) + " " * max(0, _STATUS_WIDTH - len(str(status))) if status is not None
             else " " * _STATUS_WIDTH]
    parts = []
    for key in _FIELDS.get(event.name, tuple(k for k in data if k != "status")):
        value = data.get(key)
        if value is None or value == "":
            continue
        text = duration(value) if key == "seconds" else output.compact(value, 80)
        parts.append(f"{_SHORT.get(key, key)}={text}")
    return f"{stamp}  {'  '.join(cells)}  {' '.join(parts)}".rstrip()


COMMANDS: dict[str, Callable[[Ctx], int]] = {
    "status": cmd_status, "workflows": cmd_workflows, "show-workflow": cmd_show_workflow,
    "validate": cmd_validate, "run": cmd_run, "history": cmd_history, "show": cmd_show, "stats": cmd_stats,
    "cancel": cmd_cancel, "submit": cmd_submit, "quarantine-list": cmd_quarantine_list,
    "quarantine-restore": cmd_quarantine_restore, "reload": cmd_reload, "watch": cmd_watch,
    "validate-detection": cmd_validate_detection,
}

__all__ = ["COMMANDS", "run"]
