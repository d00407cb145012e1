"""Fixtures for the detection sources: an empty spool, `sdd-ingest` run as its console script, and the ClamAV
hook built from the Makefile (the binary the tests run is the one `make hook` and the package build)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SDD_INGEST = str(Path(sys.executable).parent / "sdd-ingest")
HOOK = REPO / "build" / "sdd-virusevent"


def make_spool(root: Path) -> Path:
    for sub in ("tmp", "new", "cur", "rejected"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return make_spool(tmp_path / "spool")


def spool_detections(spool: Path) -> list[dict[str, Any]]:
    """The detections in new/, oldest first (names start with the time in ns)."""
    return [json.loads((spool / "new" / name).read_bytes()) for name in sorted(os.listdir(spool / "new"))]


@dataclass
class IngestRun:
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("sdd-ingest:")]

    @property
    def summary(self) -> str:
        return self.stderr.strip().splitlines()[-1] if self.stderr.strip() else ""


def run_ingest(fmt: str, data: bytes, spool: Path, *extra: str, env: Mapping[str, str] | None = None,
               timeout: float = 120) -> IngestRun:
    r = subprocess.run([SDD_INGEST, "--format", fmt, "--spool", str(spool), *extra], input=data,
                       capture_output=True, timeout=timeout, check=False,
                       env=dict(env) if env is not None else None)
    return IngestRun(r.returncode, r.stdout, r.stderr.decode("utf-8", "replace"))


@pytest.fixture(scope="session")
def hook() -> Path:
    """The ClamAV hook, built by `make hook` exactly as `make test` builds it."""
    r = subprocess.run(["make", "-s", "-C", str(REPO), "hook"], capture_output=True, text=True, timeout=300,
                       check=False)
    if r.returncode != 0:
        if "not found" in r.stderr or "No such file" in r.stderr:
            pytest.skip(f"no C compiler to build the hook (tests/system-deps.sh installs gcc): {r.stderr}")
        raise AssertionError(f"make hook failed:\n{r.stdout}{r.stderr}")
    assert HOOK.is_file()
    return HOOK
