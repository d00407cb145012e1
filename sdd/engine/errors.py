"""Every error the engine raises or understands, in one small hierarchy callers can catch precisely.

Actions raise `ActionError` (retryable unless told otherwise) or one of the non-retryable family
(`InvalidParams`, `Forbidden`, `NotFound`, `Conflict`); any other exception from a handler counts as a
retryable failure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class EngineError(Exception):
    """Base of every error raised by sdd.engine."""


@dataclass(frozen=True)
class ValidationIssue:
    """One problem in a workflow file, located as precisely as the YAML allows."""

    file: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file or "<workflow>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "column": self.column, "path": self.path,
                "message": self.message}


class WorkflowValidationError(EngineError):
    """A workflow (or a set of workflows) is invalid; `issues` lists every problem found, not just the first."""

    def __init__(self, issues: Iterable[ValidationIssue]):
        self.issues: list[ValidationIssue] = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues) or "invalid workflow")


class ExpressionError(EngineError):
    """An expression does not parse, is refused as unsafe or too costly, or fails while evaluating."""

    def __init__(self, message: str, expression: str | None = None):
        self.expression = expression
        super().__init__(message)


class ActionError(EngineError):
    """An action failed. `retryable=False` tells the engine not to try again."""

    def __init__(self, message: str = "", retryable: bool = True):
        self.retryable = retryable
        super().__init__(message)


class NonRetryableError(ActionError):
    """An action failure that another attempt cannot fix."""

    def __init__(self, message: str = ""):
        super().__init__(message, retryable=False)


class InvalidParams(NonRetryableError):
    """The step's parameters are wrong (missing, wrong type, out of range)."""


class Forbidden(NonRetryableError):
    """The action refuses on policy grounds (outside allowed roots, not permitted)."""


class NotFound(NonRetryableError):
    """What the action should act on does not exist (file, process, action name, workflow)."""


class Conflict(NonRetryableError):
    """The target is in a state that prevents the action (already exists, changed since detection)."""


class StepTimeout(ActionError):
    """A step attempt (or the whole step) ran out of time; retryable per attempt."""

    def __init__(self, message: str = "step timed out"):
        super().__init__(message, retryable=True)


def is_retryable(exc: BaseException) -> bool:
    """Whether another attempt could succeed: non-engine exceptions are treated as transient."""
    if isinstance(exc, ActionError):
        return exc.retryable
    return not isinstance(exc, (WorkflowValidationError, ExpressionError))


__all__ = [
    "ActionError",
    "Conflict",
    "EngineError",
    "ExpressionError",
    "Forbidden",
    "InvalidParams",
    "NonRetryableError",
    "NotFound",
    "StepTimeout",
    "ValidationIssue",
    "WorkflowValidationError",
    "is_retryable",
]
