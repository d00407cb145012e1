"""The API methods: check params, call the daemon's `Control` (control.py) or read the store, shape the result.

Each handler is `async def handler(call, params) -> result`. Authorisation has been decided before a handler
runs (see auth.py). State changes are audited with the caller's uid by the `Control` that makes them;
refused calls are audited, coalesced, by the server (`refusals.py`). Exceptions from the layers below are
mapped to error codes by `map_exception` — the message of an unexpected one is logged, not sent. Messages
say what is wrong in the caller's terms; they do not repeat the method's name (the reply answers one call).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import auth
from .errors import ApiError, Conflict, ErrorCode, Forbidden, InvalidParams, NotFound
from .params import Params

if TYPE_CHECKING:
    from .control import Control
    from .server import ApiServer

log = logging.getLogger(__name__)

MAX_PAGE = 1000
DEFAULT_PAGE = 50
MAX_YAML = 512 * 1024
# The contract's run statuses (engine's RunStatus values; spelled here so the API loads without the engine).
RUN_STATUSES = ("pending", "running", "completed", "failed", "rolled_back", "cancelled", "interrupted")
DETECTION_STATES = ("queued", "matched", "no_match", "duplicate", "excluded", "rejected")
# What `restore_file` does when something is at the original path; sddctl's --on-conflict offers the same.
ON_CONFLICT = ("fail", "rename", "overwrite")
RUN_ID_PREFIX_MIN = 4  # shorter abbreviations of a run id name too many runs to be useful


@dataclass
class Call:
    """What a handler knows about the call it serves."""

    control: Control
    server: ApiServer
    peer: auth.Peer
    access: auth.Access
    method: str


Handler = Callable[[Call, Params], Awaitable[Any]]
METHODS: dict[str, Handler] = {}


def method(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        METHODS[name] = fn
        return fn
    return register


def map_exception(exc: BaseException, method_name: str) -> ApiError:
    """The error reply for an exception raised while serving method_name."""
    if isinstance(exc, ApiError):
        return exc
    from sdd import errors as daemon_errors
    from sdd.engine import errors as engine_errors
    from sdd.store.errors import StoreValueError

    message = str(exc)
    if isinstance(exc, (StoreValueError, engine_errors.InvalidParams, engine_errors.WorkflowValidationError,
                        daemon_errors.InvalidRequest)):
        return InvalidParams(message)
    if isinstance(exc, (engine_errors.NotFound, daemon_errors.UnknownWorkflow, daemon_errors.UnknownRun)):
        return NotFound(message)
    if isinstance(exc, daemon_errors.NotAccepting):
        return Conflict(message)
    if isinstance(exc, engine_errors.Conflict):
        return Conflict(message)
    if isinstance(exc, engine_errors.Forbidden):
        return Forbidden(message)
    log.error("API: %s failed", method_name, exc_info=exc)
    return ApiError(f"internal error ({type(exc).__name__}); see the daemon's log", ErrorCode.INTERNAL)


def _page(p: Params) -> tuple[int, str | None]:
    limit = p.integer("limit", default=DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)
    cursor = p.string("cursor", max_len=1024)
    return limit, cursor


def _plain(value: Any) -> Any:
    """A store Page (or anything with to_dict) as plain data."""
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else value


# -- read methods ------------------------------------------------------------------------------------------


@method("ping")
async def ping(call: Call, p: Params) -> Any:
    p.done()
    return {"pong": True}


@method("status")
async def status(call: Call, p: Params) -> Any:
    p.done()
    result = dict(call.control.status())
    result["api"] = {"connections": call.server.connection_count, "subscribers": call.server.subscriber_count,
                     "access": str(call.access)}
    return result


def _trigger(wf: Any) -> dict[str, Any] | None:
    trigger = getattr(wf, "trigger", None)
    if trigger is None:
        return None
    schedule = getattr(trigger, "schedule", None)
    return {
        "types": list(getattr(trigger, "types", ()) or ()),
        "when": getattr(trigger, "when", None),
        "priority": getattr(trigger, "priority", 0),
        "schedule": None if schedule is None else {"every": schedule.every, "at": schedule.at},
    }


def _workflow_summary(wf: Any) -> dict[str, Any]:
    source = getattr(wf, "source", None)
    return {
        "workflow_id": wf.workflow_id,
        "name": getattr(wf, "name", "") or "",
        "description": getattr(wf, "description", "") or "",
        "steps": len(getattr(wf, "steps", ()) or ()),
        "trigger": _trigger(wf),
        "source": None if source is None else str(source),
    }


def _workflow(call: Call, workflow_id: str) -> Any:
    wf = call.control.workflows.get(workflow_id)
    if wf is None:
        raise NotFound(f"no workflow {workflow_id!r}")
    return wf


def resolve_run_id(store: Any, run_id: str) -> str:
    """A run id, or a unique prefix of one (as git and docker take abbreviated ids); NotFound when nothing
    matches, InvalidParams naming the candidates when several do."""
    if store.get_run(run_id) is not None:
        return run_id
    if len(run_id) < RUN_ID_PREFIX_MIN:
        raise NotFound(f"no run {run_id!r} (an abbreviated run id needs at least {RUN_ID_PREFIX_MIN} characters)")
    found = store.runs_with_prefix(run_id, limit=11)
    if not found:
        raise NotFound(f"no run {run_id!r}")
    if len(found) > 1:
        more = " and more" if len(found) > 10 else ""
        raise InvalidParams(f"run id prefix {run_id!r} is ambiguous: it matches {', '.join(found[:10])}{more}")
    return str(found[0])


def _finite(value: Any, where: str, depth: int = 0) -> None:
    """Refuses NaN and infinities anywhere in a value from a request (msgpack can carry them; JSON cannot)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidParams(f"{where}: a number is out of range (NaN or infinity)")
    elif isinstance(value, dict) and depth < 64:
        for k, v in value.items():
            _finite(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list) and depth < 64:
        for i, v in enumerate(value):
            _finite(v, f"{where}[{i}]", depth + 1)


@method("workflows.list")
async def workflows_list(call: Call, p: Params) -> Any:
    p.done()
    items = [_workflow_summary(wf) for _, wf in sorted(call.control.workflows.items())]
    return {"items": items}


@method("workflows.get")
async def workflows_get(call: Call, p: Params) -> Any:
    workflow_id = p.required_string("workflow_id", aliases=("id",))
    p.done()
    wf = _workflow(call, workflow_id)
    result = dict(wf.to_dict())
    result.setdefault("workflow_id", wf.workflow_id)
    summary = _workflow_summary(wf)
    result["source"] = summary["source"]
    result["trigger_summary"] = summary["trigger"]
    return result


@method("workflows.validate")
async def workflows_validate(call: Call, p: Params) -> Any:
    # An empty text is validate_text's "empty workflow file", not a missing API parameter.
    text = p.string("text", default="", max_len=MAX_YAML) or ""
    name = p.string("name", default="<api>", max_len=1024) or "<api>"
    p.done()
    # Parsing is pure Python, ~45 µs a YAML node here: a large text held the event loop, so every detection and
    # client, for seconds. In a thread the loop keeps running (it takes the GIL back every few milliseconds);
    # one validation at a time, so that a flood of them queues instead of taking every core.
    async with call.server.validating:
        return await asyncio.to_thread(_validate, text, name, call.control.engine)


def _validate(text: str, name: str, actions: Any) -> dict[str, Any]:
    from sdd.engine import WorkflowValidationError, load_text

    try:
        workflow = load_text(text, name, actions)  # (its issues are validate_text's: the text is parsed once)
    except WorkflowValidationError as exc:
        issues = exc.issues
        return {"valid": False, "issues": [i.to_dict() for i in issues], "errors": [str(i) for i in issues]}
    return {"valid": True, "issues": [], "errors": [], "workflow_id": getattr(workflow, "workflow_id", None)}


@method("runs.list")
async def runs_list(call: Call, p: Params) -> Any:
    limit, cursor = _page(p)
    workflow_id = p.string("workflow", aliases=("workflow_id",))
    status_ = p.string("status", choices=RUN_STATUSES)
    since, until = p.timestamp("since"), p.timestamp("until")
    detection = p.string("detection", max_len=1024)
    p.done()
    ids = None if detection is None else call.control.store.detection_ids(detection)
    page = call.control.store.list_runs(limit=limit, cursor=cursor, workflow_id=workflow_id,
                                       status=status_, since=since, until=until, detection_ids=ids)
    return _plain(page)


@method("runs.get")
async def runs_get(call: Call, p: Params) -> Any:
    run_id = p.required_string("run_id", aliases=("id",))
    p.done()
    run = call.control.store.get_run(resolve_run_id(call.control.store, run_id))
    if run is None:
        raise NotFound(f"no run {run_id!r}")
    return run


@method("detections.get")
async def detections_get(call: Call, p: Params) -> Any:
    ident = p.required_string("id", aliases=("detection_id",), max_len=1024)
    p.done()
    store = call.control.store
    found = store.detection_ids(ident)
    if not found:
        raise NotFound(f"no detection {ident!r} (neither sdd's id nor a producer's id)")
    if len(found) > 1:
        raise InvalidParams(f"{ident!r} names two detections: sdd's detection {found[0]} and the one whose "
                            f"producer id it is ({found[1]}); ask for detection {found[1]} by sdd's id")
    detection = store.get_detection(found[0])
    if detection is None:
        raise NotFound(f"no detection {ident!r}")
    detection["runs"] = store.list_runs(limit=100, detection_ids=[found[0]]).to_dict()["items"]
    return detection


@method("runs.stats")
async def runs_stats(call: Call, p: Params) -> Any:
    p.done()
    stats = call.control.store.run_stats()
    return {"items": list(stats.values()) if isinstance(stats, Mapping) else stats}


@method("detections.list")
async def detections_list(call: Call, p: Params) -> Any:
    limit, cursor = _page(p)
    state = p.string("state", choices=DETECTION_STATES)
    kind = p.string("type")
    severity = p.string("severity")
    since, until = p.timestamp("since"), p.timestamp("until")
    p.done()
    return _plain(call.control.store.list_detections(limit=limit, cursor=cursor, state=state, type=kind,
                                                    severity=severity, since=since, until=until))


@method("quarantine.list")
async def quarantine_list(call: Call, p: Params) -> Any:
    limit, cursor = _page(p)
    restored = p.optional_boolean("restored")
    p.done()
    return _plain(call.control.store.list_quarantine(limit=limit, cursor=cursor, restored=restored))


# -- state-changing methods --------------------------------------------------------------------------------
# The daemon's Control records every state change it makes in the audit log with the caller's uid; the server
# records the calls that were refused before or by the Control (see ApiServer.dispatch).


@method("runs.start")
async def runs_start(call: Call, p: Params) -> Any:
    workflow_id = p.required_string("workflow_id", aliases=("workflow", "id"))
    context = p.mapping("context")
    dry_run = p.boolean("dry_run")
    detection = p.mapping("detection") if p.present("detection") else None
    p.done()
    _finite(context, "params.context")
    _workflow(call, workflow_id)
    return await call.control.start_run(workflow_id, context, dry_run, call.peer.uid, detection=detection)


@method("runs.cancel")
async def runs_cancel(call: Call, p: Params) -> Any:
    run_id = resolve_run_id(call.control.store, p.required_string("run_id", aliases=("id",)))
    p.done()
    if not await call.control.cancel_run(run_id, call.peer.uid):
        run = call.control.store.get_run(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}")
        raise Conflict(f"run {run_id} is not active (status {_get(run, 'status')})")
    return {"run_id": run_id, "cancelled": True}


@method("detections.submit")
async def detections_submit(call: Call, p: Params) -> Any:
    detection = p.mapping("detection", required=True)
    p.done()
    kind = detection.get("type")
    if not isinstance(kind, str) or not kind.strip():
        raise InvalidParams("params.detection.type: a non-empty string is required")
    return await call.control.submit_detection(detection, call.peer.uid)


@method("quarantine.restore")
async def quarantine_restore(call: Call, p: Params) -> Any:
    qid = p.required_string("id", aliases=("quarantine_id",))
    on_conflict = p.string("on_conflict", default="fail", choices=ON_CONFLICT) or "fail"
    force = p.boolean("force")
    p.done()
    if force and call.peer.uid != 0:
        # Restoring into a directory that is no longer the one the file left is root's decision alone.
        raise Forbidden("quarantine.restore: params.force: only root may force a restore")
    if call.control.store.get_quarantine(qid) is None:
        raise NotFound(f"no quarantine entry {qid!r}")
    return await call.control.restore_quarantine(qid, on_conflict, call.peer.uid, force=force)


@method("reload")
async def reload(call: Call, p: Params) -> Any:
    p.done()
    return await call.control.reload(call.peer.uid)


def subscribe_params(p: Params) -> tuple[frozenset[str] | None, int | None]:
    """The `subscribe` params: `events` (names to receive; all when absent) and `queue` (bound, 10..10000)."""
    from sdd_client.events import EVENT_NAMES

    events = p.string_list("events")
    queue = p.integer("queue", default=0, minimum=0, maximum=10000) or None
    p.done()
    if queue is not None and queue < 10:
        raise InvalidParams("params.queue: must be at least 10")
    unknown = [e for e in events or () if e not in EVENT_NAMES]
    if unknown:
        raise InvalidParams(f"params.events: no such event {unknown[0][:80]!r} (events: {', '.join(EVENT_NAMES)})")
    return (frozenset(events) if events else None), queue


def _get(value: Any, key: str, default: Any = None) -> Any:
    if isinstance(value, Mapping):
        return value.get(key, default)
    return getattr(value, key, default)


__all__ = ["METHODS", "Call", "map_exception", "subscribe_params"]
