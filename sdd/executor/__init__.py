"""The root side of sdd: the host-changing primitives, their checks, and the boundary to the daemon."""

from .abortable import Outcome
from .client import SocketExecutor
from .errors import PrimitiveError, Unavailable
from .policy import Policy
from .protocol import Delete, Kill, Lookup, Quarantine, Request, Restore, RunScript, Scan
from .seam import Executor, InProcessExecutor
from .server import ExecutorServer
from .vault import Vault, quarantine_id

__all__ = ["Delete", "Executor", "ExecutorServer", "InProcessExecutor", "Kill", "Lookup", "Outcome", "Policy",
           "PrimitiveError", "Quarantine", "Request", "Restore", "RunScript", "Scan", "SocketExecutor", "Unavailable", "Vault",
           "quarantine_id"]
