"""Start-up crash recovery (contract "Crash semantics"): runs a crash left `running` are resumed.

Each run is resumed from its stored workflow snapshot (never the current file: the run must finish the way
it started) with the steps the history recorder saw (`prior`): completed and skipped steps are reused
without running again; a step found in flight (intent, no outcome) is run again only when its action is
idempotent, else the engine applies the workflow's `on_interrupt` (default: the step and the run end
`interrupted`). A run whose snapshot cannot be used any more ends `interrupted` with the reason.

Detections committed but never matched (state `queued`) need nothing here: the daemon's dispatcher reads
them from the database like any backlog, and skips starting runs for one that already has runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sdd.engine import PriorStep, RunHandle, Workflow, WorkflowEngine
from sdd.engine.statuses import RunStatus
from sdd.labels import Trigger, external_id, run_labels
from sdd.logging import kv
from sdd.store import Store

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    resumed: list[str] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)
    handles: list[RunHandle] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"resumed": len(self.resumed), "abandoned": len(self.abandoned)}


async def recover_runs(store: Store, engine: WorkflowEngine,
                       prior_steps: Callable[[str], Mapping[str, PriorStep]]) -> RecoveryReport:
    """Resumes every run left `running` or `pending`, labelled as it was started (`sdd.labels`: its detection,
    the producer's id read back from the detection, its trigger and uid); returns what was done."""
    report = RecoveryReport()
    rows: list[Mapping[str, Any]] = []
    for status in (RunStatus.RUNNING, RunStatus.PENDING):
        rows.extend(store.runs_in_status(status))
    for row in rows:
        run_id = str(row["run_id"])
        try:
            workflow = Workflow.from_dict(row["workflow"])
        except Exception as exc:  # noqa: BLE001 -- the snapshot is ours, but a bad one must not stop the daemon
            await _abandon(store, run_id, f"cannot resume: stored workflow is unusable: {exc}")
            report.abandoned.append(run_id)
            continue
        detection: Mapping[str, Any] | None = None
        detection_id = row.get("detection_id")
        if detection_id is not None:
            found = store.get_detection(detection_id)
            detection = (found or {}).get("data") if found else None
        try:
            prior = prior_steps(run_id)
            labels = run_labels(detection_id=None if detection_id is None else str(detection_id),
                                external_id=external_id(detection),
                                trigger=Trigger(row.get("trigger") or Trigger.DETECTION), uid=row.get("uid"))
            context = row.get("context") or {}
            handle = engine.start(workflow, context, detection=detection, run_id=run_id,
                                  dry_run=bool(row.get("dry_run")), prior=prior, labels=labels)
        except Exception as exc:
            log.exception("cannot resume a run", extra=kv(run_id=run_id))
            await _abandon(store, run_id, f"cannot resume: {exc}")
            report.abandoned.append(run_id)
            continue
        report.resumed.append(run_id)
        report.handles.append(handle)
        log.info("resuming a run interrupted by a crash",
                 extra=kv(run_id=run_id, workflow=workflow.workflow_id, steps_done=len(prior or {})))
    return report


async def _abandon(store: Store, run_id: str, reason: str) -> None:
    log.error("run abandoned", extra=kv(run_id=run_id, reason=reason))
    await store.finish_run(run_id, RunStatus.INTERRUPTED.value, reason, time.time())
