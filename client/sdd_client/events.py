"""The names of the events a `subscribe` stream carries, shared by the daemon (which publishes them) and its
clients (`sddctl watch --event`, which must refuse a name that will never come)."""

from __future__ import annotations

DETECTION_RECEIVED = "detection.received"    # accepted and recorded: {detection_id, external_id, type, ...}
DETECTION_REJECTED = "detection.rejected"    # a spool file refused: {name, reason}
DETECTION_DUPLICATE = "detection.duplicate"  # {detection_id, external_id, of}
DETECTION_EXCLUDED = "detection.excluded"    # {detection_id, external_id}
DETECTION_MATCHED = "detection.matched"      # its runs were started: {detection_id, external_id, runs}
DETECTION_NO_MATCH = "detection.no_match"    # no workflow took it: {detection_id, external_id, reason}
RUN_STARTED = "run.started"
STEP_STARTED = "step.started"
STEP_FINISHED = "step.finished"
STEP_WAITING = "step.waiting"                # a guard holds a step before it acts: {run_id, step_id, waiting,
                                             # reason, since}; again with waiting false when it got its slot
GUARD_TRIPPED = "guard.tripped"              # a rate limit reached with steps waiting, or a breaker opened
                                             # (once per trip): {guard, reason, at, action, limit, per_seconds}
RUN_FINISHED = "run.finished"
NOTIFICATION = "notification"
STATUS_CHANGED = "status.changed"
LAGGED = "lagged"                            # sent to a subscriber that fell behind: {missed}

# What a subscriber may ask for (`lagged` always comes, asked for or not).
EVENT_NAMES: tuple[str, ...] = (
    DETECTION_RECEIVED, DETECTION_REJECTED, DETECTION_DUPLICATE, DETECTION_EXCLUDED, DETECTION_MATCHED,
    DETECTION_NO_MATCH, RUN_STARTED, STEP_STARTED, STEP_FINISHED, RUN_FINISHED, NOTIFICATION, STATUS_CHANGED,
    STEP_WAITING, GUARD_TRIPPED,
)

__all__ = [
    "DETECTION_DUPLICATE", "DETECTION_EXCLUDED", "DETECTION_MATCHED", "DETECTION_NO_MATCH", "DETECTION_RECEIVED",
    "DETECTION_REJECTED", "EVENT_NAMES", "GUARD_TRIPPED", "LAGGED", "NOTIFICATION", "RUN_FINISHED", "RUN_STARTED", "STATUS_CHANGED",
    "STEP_FINISHED", "STEP_STARTED", "STEP_WAITING",
]
