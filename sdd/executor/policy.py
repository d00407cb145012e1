"""What the executor enforces, from its own configuration, never from a request."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Policy:
    """`allowed_roots` bound every path; `vault_dir` is the vault; `protected_processes` (resolved
    executable paths) and `sdd_pids` (the executor, the daemon, their supervisor: with their ancestors and
    threads never signalled) bound kill; `scripts_dir` bounds run_script."""

    allowed_roots: tuple[str, ...]
    vault_dir: str
    protected_processes: frozenset[str] = frozenset()
    sdd_pids: frozenset[int] = frozenset()
    scripts_dir: str = ""        # run_script runs only executables from here
    user_mode: bool = False      # user mode: scripts may be the user's, not only root's

    @classmethod
    def build(cls, allowed_roots: Iterable[os.PathLike[str] | str], vault_dir: os.PathLike[str] | str,
              protected_processes: Iterable[str] = (), sdd_pids: Iterable[int] = (), *,
              scripts_dir: os.PathLike[str] | str = "", user_mode: bool = False) -> Policy:
        return cls(tuple(os.path.normpath(os.fspath(r)) for r in allowed_roots), os.fspath(vault_dir),
                   frozenset(os.path.realpath(p) for p in protected_processes),
                   frozenset({os.getpid(), *sdd_pids}), os.fspath(scripts_dir), user_mode)

    def with_pids(self, *pids: int) -> Policy:
        return replace(self, sdd_pids=self.sdd_pids | {p for p in pids if p > 0})
