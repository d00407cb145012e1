"""Control-flow signals of a run: exceptions that unwind the step walk to the level that handles them.

They never leave the engine: `Run.main` and composite steps turn them into statuses.
"""

from __future__ import annotations

from .statuses import RunStatus


class _Abort(Exception):
    """A step failed and its policy stops the enclosing run (or composite step)."""

    def __init__(self, path: str, error: str, rollback: bool = False, status: RunStatus = RunStatus.FAILED):
        super().__init__(error)
        self.path, self.error, self.rollback, self.status = path, error, rollback, status


class _Halt(Exception):
    """A condition step with `on_false: stop` ends the run successfully."""


class StepProblem(Exception):
    """A step cannot do its work for a reason of its own (bad loop items, unknown sub-workflow, depth limit,
    a false check with `on_false: fail`): the step fails with this message, under its `on_failure`."""


__all__ = ["StepProblem", "_Abort", "_Halt"]
