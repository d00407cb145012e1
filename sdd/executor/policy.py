"""What the executor enforces, from its own configuration, never from a request."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Policy:
    """`allowed_roots` bound every path; `vault_dir` is the vault; `protected_processes` (resolved
    executable paths) and `sdd_pids` (the executor, the daemon, their supervisor: with their ancestors and
    threads never signalled) bound kill; `scripts_dir` bounds run_script; `scanner` and `yara_rules` are
    what run_scan runs."""

    allowed_roots: tuple[str, ...]
    vault_dir: str
    protected_processes: frozenset[str] = frozenset()
    sdd_pids: frozenset[int] = frozenset()
    scripts_dir: str = ""        # run_script runs only executables from here
    user_mode: bool = False      # user mode: scripts and rules may be the user's, not only root's
    scanner: tuple[str, ...] = ("clamdscan",)   # run_scan's clamav engine (clamd by descriptor, or a program)
    yara_rules: str = ""         # run_scan's yara engine

    @classmethod
    def build(cls, allowed_roots: Iterable[os.PathLike[str] | str], vault_dir: os.PathLike[str] | str,
              protected_processes: Iterable[str] = (), sdd_pids: Iterable[int] = (), *,
              scripts_dir: os.PathLike[str] | str = "", user_mode: bool = False,
              scanner: Iterable[str] = ("clamdscan",), yara_rules: os.PathLike[str] | str = "") -> Policy:
        return cls(tuple(os.path.normpath(os.fspath(r)) for r in allowed_roots), os.fspath(vault_dir),
                   frozenset(os.path.realpath(p) for p in protected_processes),
                   frozenset({os.getpid(), *sdd_pids}), os.fspath(scripts_dir), user_mode, tuple(scanner),
                   os.fspath(yara_rules))

    def with_pids(self, *pids: int) -> Policy:
        return replace(self, sdd_pids=self.sdd_pids | {p for p in pids if p > 0})
