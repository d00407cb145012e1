"""What the socket API asks of the daemon: the `Control` protocol the methods call (`call.control`).

The daemon's `sdd.daemon.control.Control` is the one implementation; the API's unit tests use a stand-in.
Every state change it makes is checked and audited with the caller's uid by the implementation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # types only: the API's modules load without the engine and the store
    from sdd.config import Config
    from sdd.engine import Workflow, WorkflowEngine
    from sdd.hub import EventHub
    from sdd.store import Store


class Control(Protocol):
    @property
    def config(self) -> Config: ...

    @property
    def hub(self) -> EventHub: ...

    @property
    def store(self) -> Store: ...

    @property
    def engine(self) -> WorkflowEngine: ...

    @property
    def workflows(self) -> Mapping[str, Workflow]: ...

    def status(self) -> dict[str, Any]: ...

    async def submit_detection(self, data: Mapping[str, Any], uid: int | None = None, *,
                               spool_name: str | None = None, source: str = "api") -> dict[str, Any]: ...

    async def start_run(self, workflow_id: str, context: Mapping[str, Any] | None = None, dry_run: bool = False,
                        uid: int | None = None, detection: Mapping[str, Any] | None = None) -> dict[str, Any]: ...

    async def cancel_run(self, run_id: str, uid: int | None = None) -> bool: ...

    async def restore_quarantine(self, qid: str, on_conflict: str = "fail", uid: int | None = None, *,
                                 force: bool = False) -> dict[str, Any]: ...

    async def reload(self, uid: int | None = None) -> dict[str, Any]: ...


__all__ = ["Control"]
