"""sdd.actions: the built-in response actions, the quarantine vault and the guards. Re-exports only."""

from sdd.executor.vault import Vault, quarantine_id

from .builtin import BUILTINS, builtin_actions
from .errors import BreakerOpen, RateLimited
from .guards import BreakerState, Guards
from .runlog import RunLog
from .services import ActionServices, guards_status

__all__ = [
           "BUILTINS",
           "ActionServices",
           "BreakerOpen",
           "BreakerState",
           "Guards",
           "RateLimited",
           "RunLog",
           "Vault",
           "builtin_actions",
           "guards_status",
           "quarantine_id",
]
