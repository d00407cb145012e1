"""Fixtures for the action tests: an allowed root and a state directory in tmp, services bound to them,
and a way to run one action as a real engine step (so current_step() and idempotency keys are real)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdd.actions import ActionServices, builtin_actions
from sdd.config import ActionsConfig
from sdd.engine import Workflow, WorkflowEngine
from tests.support.trusted import traversable_tmpdir, trusted_dir

from .procs import procs  # noqa: F401  (fixture)


def snapshot(path: Path) -> dict[str, tuple[int, int, bytes | str]]:
    """Every entry under `path` with its type, mode and content (or link target): 'nothing changed' checks."""
    out: dict[str, tuple[int, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if os.path.islink(full):
                content: bytes | str = os.readlink(full)
            elif os.path.isfile(full):
                content = Path(full).read_bytes()
            else:
                content = b""
            out[os.path.relpath(full, path)] = (st.st_mode, st.st_ino, content)
    return out


class Env:
    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.tmp = tmp_path
        self.root = tmp_path / "root"
        self.state = tmp_path / "state"
        self.outside = tmp_path / "outside"
        self.scripts = trusted_dir("scripts")   # run_script runs only from a path that is root's all the way
        for d in (self.root, self.state, self.outside):
            d.mkdir(exist_ok=True)
        os.chmod(self.scripts, 0o755)
        self.configure(**config)

    def configure(self, store: Any = None, notify: Any = None, **config: Any) -> None:
        base = ActionsConfig(allowed_roots=(self.root,), scripts_dir=self.scripts)
        self.config = dataclasses.replace(base, **config)
        self.services = ActionServices(self.config, self.state, store=store, notify=notify)
        self.actions = {spec.name: spec for spec in builtin_actions(self.services)}

    async def call(self, name: str, **params: Any) -> Any:
        return await self.actions[name].handler(**params, context={})

    def engine(self) -> WorkflowEngine:
        return WorkflowEngine(actions=self.actions.values(), listeners=[self.services.run_log])

    async def step(self, name: str, params: dict[str, Any], *, detection: dict[str, Any] | None = None,
                   **step: Any) -> Any:
        wf = Workflow.from_dict({"workflow_id": "t", "steps": [
            {"step_id": "s", "action": name, "params": params, **step}]})
        return await self.engine().execute_workflow(wf, detection=detection)

    @property
    def vault(self) -> Path:
        return self.state / "vault"

    def vault_items(self) -> list[str]:
        return sorted(os.listdir(self.vault)) if self.vault.exists() else []


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.fixture
def area() -> Iterator[Path]:
    """An allowed root other users can reach (pytest's tmp_path is root's alone)."""
    with traversable_tmpdir("sdd-act-", 0o755) as d:
        yield d
