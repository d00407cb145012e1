"""Reading the shipped systemd/tmpfiles/sysusers files, for the packaging tests.

Small parsers, not general ones: they understand exactly the syntax the files in systemd/ use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "systemd"
SERVICE = SYSTEMD_DIR / "sdd.service"
SOCKET = SYSTEMD_DIR / "sdd.socket"
EXECUTOR = SYSTEMD_DIR / "sdd-executor.service"
EXECUTOR_SOCKET = SYSTEMD_DIR / "sdd-executor.socket"
SYSUSERS = SYSTEMD_DIR / "sdd.sysusers"
TMPFILES = SYSTEMD_DIR / "sdd.tmpfiles"
NOTIFIER = SYSTEMD_DIR / "sdd-notifier.service"


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file, values in order (a key may repeat), comments dropped."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def unit_comments(path: Path) -> str:
    return "\n".join(
        line for line in path.read_text(encoding="utf-8").splitlines() if line.lstrip().startswith("#")
    )


@dataclass(frozen=True)
class TmpfilesEntry:
    kind: str
    path: str
    mode: int
    user: str
    group: str
    age: str


def tmpfiles_entries(path: Path = TMPFILES) -> list[TmpfilesEntry]:
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        kind, target, mode, user, group, age = line.split()[:6]
        entries.append(TmpfilesEntry(kind, target, int(mode, 8), user, group, age))
    return entries


def sysusers_groups(path: Path = SYSUSERS) -> list[str]:
    """The groups the file makes: its `g` lines, and the group of the same name each `u` line makes."""
    return [
        line.split()[1]
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#") and line.split()[0] in ("g", "u")
    ]


def sysusers_users(path: Path = SYSUSERS) -> list[str]:
    return [
        line.split()[1]
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#") and line.split()[0] == "u"
    ]


_EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+\.\d)")


def exposure(output: str) -> float:
    """The score from `systemd-analyze security` output."""
    match = _EXPOSURE.search(output)
    if not match:
        raise ValueError(f"no exposure level in: {output[-500:]!r}")
    return float(match.group(1))


# ---- the unit's seccomp settings, resolved the way systemd does -------------------------------------


def syscall_groups(analyze: str) -> dict[str, list[str]]:
    """Every `@group` systemd knows, with its members (syscall names and nested `@group`s)."""
    import subprocess

    out = subprocess.run([analyze, "syscall-filter"], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.startswith("    ") and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def resolve_syscalls(items: list[str], groups: dict[str, list[str]]) -> set[str]:
    names: set[str] = set()
    for item in items:
        if item.startswith("@"):
            names |= resolve_syscalls(groups[item], groups)
        elif item:
            names.add(item)
    return names


def syscall_allow_list(path: Path, analyze: str) -> set[str]:
    """The syscalls `SystemCallFilter=` lines allow, in order: the first line (an allow list) starts from
    @default as systemd does, `~` lines remove, later plain lines add."""
    groups = syscall_groups(analyze)
    allowed: set[str] | None = None
    for value in unit_settings(path).get("SystemCallFilter", []):
        deny = value.startswith("~")
        names = resolve_syscalls(value.lstrip("~").split(), groups)
        if allowed is None:
            if deny:
                raise ValueError("a deny-list SystemCallFilter= is not what sdd.service uses")
            allowed = resolve_syscalls(["@default"], groups)
        allowed = allowed - names if deny else allowed | names
    return allowed or set()
