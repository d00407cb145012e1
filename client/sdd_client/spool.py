"""Writing detections into the daemon's spool, as `sddctl submit` (and ClamAV's `VirusEvent`) does.

Maildir rules: the file is written and fsynced under `SPOOL/tmp/` with a unique name, then `rename(2)`d into
`SPOOL/new/`, so the daemon never sees half a detection. The spool is found by `--spool`, else
`$SDD_SPOOL`, else `paths.spool` of the config file (`--config`, else `$SDD_CONFIG`, else /etc/sdd/sdd.toml
when it exists), else /var/spool/sdd. clamd runs `VirusEvent` with an empty environment, so every fallback
must work without one. This module reads the TOML itself: the client never imports the daemon.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import time
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ClientError

DEFAULT_SPOOL = Path("/var/spool/sdd")
SYSTEM_CONFIG = Path("/etc/sdd/sdd.toml")
MAX_DETECTION = 1024 * 1024  # the daemon rejects bigger spool files


class SubmitError(ClientError):
    """The detection cannot be written (bad data, no spool, permissions)."""


class UsageError(ClientError):
    """The caller asked for something impossible (missing variable, bad option)."""

    exit_code = 2


@dataclass(frozen=True)
class Submitted:
    path: Path  # where the file landed in new/
    spool: Path


def resolve_spool(explicit: str | None = None, config: str | None = None,
                  environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if env.get("SDD_SPOOL"):
        return Path(env["SDD_SPOOL"])
    config_file = Path(config) if config else Path(env["SDD_CONFIG"]) if env.get("SDD_CONFIG") else None
    if config_file is None and SYSTEM_CONFIG.is_file():
        config_file = SYSTEM_CONFIG
    if config_file is not None:
        spool = _spool_from_config(config_file, required=bool(config or env.get("SDD_CONFIG")))
        if spool is not None:
            return spool
    return DEFAULT_SPOOL


def _spool_from_config(path: Path, required: bool) -> Path | None:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise UsageError(f"config file {path} does not exist") from None
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    paths = raw.get("paths", {})
    spool = paths.get("spool") if isinstance(paths, dict) else None
    if spool is None:
        return None
    if not isinstance(spool, str) or not os.path.isabs(spool):
        raise UsageError(f"{path}: paths.spool must be an absolute path, got {spool!r}")
    return Path(spool)


def clamav_detection(environ: Mapping[str, str] | None = None, severity: str = "high") -> dict[str, Any]:
    """The detection ClamAV's `VirusEvent` describes in CLAM_VIRUSEVENT_FILENAME / _VIRUSNAME."""
    env = os.environ if environ is None else environ
    missing = [n for n in ("CLAM_VIRUSEVENT_FILENAME", "CLAM_VIRUSEVENT_VIRUSNAME") if not env.get(n)]
    if missing:
        raise UsageError(f"--clamav: {' and '.join(missing)} not set (run by clamd's VirusEvent?)")
    return {
        "type": "malware",
        "severity": severity,
        "file_path": env["CLAM_VIRUSEVENT_FILENAME"],
        "threat_name": env["CLAM_VIRUSEVENT_VIRUSNAME"],
        "scanner": "clamav",
        "detected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def process_start_time(pid: int) -> float:
    """Epoch seconds the process started (what psutil's create_time() gives), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # The command name may contain spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        start_ticks = int(fields[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration) as exc:
        raise SubmitError(f"cannot read the start time of process {pid}: {exc}") from None
    return btime + start_ticks / os.sysconf("SC_CLK_TCK")


def parse_json(text: str, where: str) -> Any:
    """JSON from a user or a file, as the daemon will judge it: NaN, Infinity and numbers out of a double's
    range (`1e999`) are refused with a reason instead of turning into infinity."""
    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    def number(token: str) -> float:
        value = float(token)
        if not math.isfinite(value):
            raise ValueError(f"number {token[:40]} is out of range (not a finite double)")
        return value
    try:
        return json.loads(text, parse_constant=constant, parse_float=number)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{where}: invalid JSON: {exc}") from None


def read_detection_file(path: str) -> dict[str, Any]:
    """A detection from a JSON file (`sddctl run --detection FILE`): one object of at most 1 MiB. The daemon
    checks it further, exactly as it checks a spool file."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_DETECTION + 1)
    except OSError as exc:
        raise UsageError(f"--detection {path}: cannot read it: {exc.strerror or exc}") from None
    if len(raw) > MAX_DETECTION:
        raise UsageError(f"--detection {path}: larger than {MAX_DETECTION} bytes (the spool's limit)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"--detection {path}: not valid UTF-8 (byte {exc.start})") from None
    value = parse_json(text, f"--detection {path}")
    if not isinstance(value, dict):
        raise UsageError(f"--detection {path}: expected one JSON object (a detection), got {type(value).__name__}")
    return value


def new_detection_id() -> str:
    """An id for a detection whose producer gave none: unique, so a producer can follow what it sent."""
    return str(uuid.uuid4())


def encode_detection(detection: Mapping[str, Any]) -> bytes:
    kind = detection.get("type")
    if not isinstance(kind, str) or not kind.strip():
        raise UsageError("a detection needs a non-empty 'type' (--type)")
    try:
        data = json.dumps(detection, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except ValueError:
        raise UsageError("a detection cannot hold NaN or infinite numbers") from None
    if len(data) > MAX_DETECTION:
        raise SubmitError(f"detection is {len(data)} bytes; the spool accepts at most {MAX_DETECTION}")
    return data


def write_detection(spool: Path, detection: Mapping[str, Any]) -> Submitted:
    """Writes one detection atomically: tmp/NAME (fsynced), then rename into new/NAME."""
    data = encode_detection(detection)
    tmp_dir, new_dir = spool / "tmp", spool / "new"
    for d in (tmp_dir, new_dir):
        if not d.is_dir():
            raise SubmitError(f"spool directory {d} does not exist (is sdd installed, is the spool right?)")
    name = f"{time.time_ns()}.{os.getpid()}_{secrets.token_hex(6)}.{_hostname()}.json"
    tmp_path = tmp_dir / name
    try:
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise SubmitError(f"cannot create {tmp_path}: {exc.strerror}") from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp_path, new_dir / name)
    except OSError as exc:
        try:
            os.unlink(tmp_path)
        except OSError:
            pass
        raise SubmitError(f"cannot write the detection into {spool}: {exc.strerror or exc}") from None
    _fsync_dir(new_dir)
    return Submitted(new_dir / name, spool)


def _hostname() -> str:
    # Maildir names must not contain '/' or ':'; keep them short and plain.
    return "".join(c for c in socket.gethostname() if c.isalnum() or c in "-_")[:32] or "host"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = [
    "DEFAULT_SPOOL",
    "SubmitError",
    "Submitted",
    "UsageError",
    "clamav_detection",
    "encode_detection",
    "new_detection_id",
    "parse_json",
    "process_start_time",
    "read_detection_file",
    "resolve_spool",
    "write_detection",
]
