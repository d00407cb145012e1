"""The words of a workflow: step types and the policies a step or workflow may name, each list defined once
(the JSON Schema's enums say the same; `tests/engine/test_validation.py` keeps them in step).

`StrEnum` members equal their strings, so `step.step_type == StepType.LOOP` holds for a step built from YAML
(a plain string) as well as for one built in code with `StepType.LOOP` or the original's `StepType.LOOP.value`.
"""

from __future__ import annotations

from enum import StrEnum


class StepType(StrEnum):
    """What a step is. The first four are leaves (they call one action); the rest contain or steer others."""

    ACTION = "action"
    NOTIFICATION = "notification"
    SCRIPT = "script"
    WEBHOOK = "webhook"
    CONDITION = "condition"
    LOOP = "loop"
    PARALLEL = "parallel"
    BRANCH = "branch"
    WORKFLOW = "workflow"


class OnFailure(StrEnum):
    """What a failed step does to the rest of its run (or enclosing composite step)."""

    ABORT = "abort"
    CONTINUE = "continue"
    SKIP = "skip"
    RETRY = "retry"
    ROLLBACK = "rollback"


class OnInterrupt(StrEnum):
    """What resuming a run does with a non-idempotent step whose outcome is unknown."""

    FAIL = "fail"
    RETRY = "retry"
    ROLLBACK = "rollback"


class OnFalse(StrEnum):
    """What a condition step does when its check is false."""

    STOP = "stop"
    FAIL = "fail"
    CONTINUE = "continue"


STEP_TYPES: tuple[str, ...] = tuple(StepType)
LEAF_TYPES: frozenset[str] = frozenset({StepType.ACTION, StepType.NOTIFICATION, StepType.SCRIPT, StepType.WEBHOOK})
# Step types that are shorthands for one built-in action.
TYPE_ACTIONS: dict[str, str] = {StepType.NOTIFICATION: "send_notification", StepType.SCRIPT: "run_script",
                                StepType.WEBHOOK: "call_webhook"}
# Failure policies under which a failed step lets its run go on.
CARRY_ON: frozenset[str] = frozenset({OnFailure.CONTINUE, OnFailure.SKIP})
DEFAULT_ON_FAILURE: str = OnFailure.ABORT.value
DEFAULT_RETRIES_FOR_RETRY = 3   # `on_failure: retry` without max_retries

__all__ = [
    "CARRY_ON",
    "DEFAULT_ON_FAILURE",
    "DEFAULT_RETRIES_FOR_RETRY",
    "LEAF_TYPES",
    "STEP_TYPES",
    "TYPE_ACTIONS",
    "OnFailure",
    "OnFalse",
    "OnInterrupt",
    "StepType",
]
