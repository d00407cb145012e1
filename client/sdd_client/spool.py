"""Writing detections into the daemon's spool, as `sddctl submit` (and ClamAV's `VirusEvent`) does.

The writing itself, the spool's resolution (`--spool`, `$SDD_SPOOL`, `paths.spool` of the config file,
/var/spool/sdd) and the encoding rules live in `spoolfile.py`, which `sdd-ingest` shares; this module gives
them the `Path`-based interface sddctl uses, and builds the ClamAV detection. clamd runs `VirusEvent` with an
empty environment, so every fallback must work without one. The client never imports the daemon.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import procstat, spoolfile
from .detection import parse_json as _strict_json
from .spoolfile import MAX_DETECTION, SubmitError, UsageError, encode_detection

DEFAULT_SPOOL = Path(spoolfile.DEFAULT_SPOOL)
SYSTEM_CONFIG = Path(spoolfile.SYSTEM_CONFIG)


@dataclass(frozen=True)
class Submitted:
    path: Path  # where the file landed in new/
    spool: Path


def resolve_spool(explicit: str | None = None, config: str | None = None,
                  environ: Mapping[str, str] | None = None) -> Path:
    return Path(spoolfile.resolve_spool(explicit, config, environ, system_config=str(SYSTEM_CONFIG)))


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
        "source": "clamav",
        "detected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def process_start_time(pid: int) -> float:
    """Epoch seconds the process started (what psutil's create_time() gives), from /proc."""
    try:
        return procstat.start_time(pid)
    except (OSError, ValueError, IndexError) as exc:
        raise SubmitError(f"cannot read the start time of process {pid}: {exc}") from None


def parse_json(text: str, where: str) -> Any:
    """JSON from a user or a file, as the daemon will judge it: NaN, Infinity and numbers out of a double's
    range (`1e999`) are refused with a reason instead of turning into infinity."""
    try:
        return _strict_json(text)
    except ValueError as exc:
        raise UsageError(f"{where}: {exc}") from None


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


def write_detection(spool: Path, detection: Mapping[str, Any]) -> Submitted:
    """Writes one detection atomically and durably (see spoolfile.py): tmp/NAME, then new/NAME."""
    data = encode_detection(detection)
    with spoolfile.SpoolWriter(os.fspath(spool)) as writer:
        name = writer.write_one(data)
    return Submitted(Path(spool) / "new" / name, Path(spool))


__all__ = [
    "DEFAULT_SPOOL",
    "MAX_DETECTION",
    "SYSTEM_CONFIG",
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
