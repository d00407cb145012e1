"""The handlers' side of the executor seam: send one request, get the engine's vocabulary back.

Every host-changing primitive a handler needs goes through `execute(services, request, before_act)`, in user
mode to the in-process executor, in system mode to the root one. The executor's errors become the engine's
here (and, for helpers a handler calls directly, in `builtin.py`), so retries are decided by one table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdd.executor import Outcome, PrimitiveError, Request
from sdd.executor.seam import nothing

from .errors import ActionError, Conflict, Forbidden, InvalidParams, NotFound
from .services import ActionServices

_BY_CODE: dict[str, type[ActionError]] = {"invalid_params": InvalidParams, "forbidden": Forbidden,
                                          "not_found": NotFound, "conflict": Conflict}


def engine_error(exc: PrimitiveError) -> ActionError:
    cls = _BY_CODE.get(exc.code)
    if cls is not None:
        return cls(str(exc))
    return ActionError(str(exc), retryable=exc.retryable)


async def execute(services: ActionServices, req: Request,
                  before_act: Callable[[], None] = nothing) -> Outcome[dict[str, Any]]:
    try:
        assert services.executor is not None
        return await services.executor.call(req, before_act)
    except PrimitiveError as exc:
        raise engine_error(exc) from exc
