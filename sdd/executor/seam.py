"""The one seam between the daemon's action handlers and the host-changing primitives.

`Executor.call(request, before_act)` carries out one typed request (`protocol.py`) and returns an
`Outcome` (its plain-data result; `cancelled` when the step was cancelled after the commit point, so the act
happened and must be recorded). User mode uses `InProcessExecutor`, which runs the primitives in this
process; system mode `SocketExecutor` (`client.py`), which sends the same request to the root executor.
Both run the same primitive functions, with the same checks, abort points and `before_act` moment.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

from .abortable import Outcome, run_abortable
from .policy import Policy
from .primitives import ASYNC, SYNC
from .protocol import Request


def nothing() -> None:
    return None


class Executor(Protocol):
    async def call(self, req: Request, before_act: Callable[[], None] = nothing) -> Outcome[dict[str, Any]]: ...

    async def close(self) -> None: ...


class InProcessExecutor:
    """The primitives in this process (user mode, tests): the seam without the boundary."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    async def call(self, req: Request, before_act: Callable[[], None] = nothing) -> Outcome[dict[str, Any]]:
        run_async = ASYNC.get(type(req))
        if run_async is not None:
            async def act() -> None:
                before_act()
            return Outcome(await run_async(self.policy, req, act), False)
        return await run_abortable(functools.partial(SYNC[type(req)], self.policy, req, before_act))

    async def close(self) -> None:
        return None
