"""docs/fleet.md's recipe, run as written (only the directory and the ports changed): one nats-server, two sdd
daemons playing two hosts, and the consumer showing both hosts' events; and its config block parses."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest

from sdd.config import parse_config
from tests.support.nats import require_nats

REPO = Path(__file__).resolve().parents[2]
FLEET_MD = REPO / "docs" / "fleet.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", FLEET_MD.read_text(encoding="utf-8"), flags=re.DOTALL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_documented_config_block_is_valid() -> None:
    [block] = [b for b in blocks("toml") if "[export.nats]" in b]
    config = parse_config(tomllib.loads(block))
    assert config.export.nats is not None and config.intake.nats is not None
    assert config.export.ocsf_file_max_bytes == 104857600


@pytest.mark.timeout(300)
def test_the_fleet_recipe_runs_as_written(tmp_path: Path) -> None:
    require_nats()
    [recipe] = [b for b in blocks("sh") if b.startswith("# The fleet recipe")]
    fleet = Path(tempfile.mkdtemp(prefix="sddf-", dir="/tmp")) / "fleet"  # AF_UNIX paths: ~100 bytes at most
    nats_port, metrics_port = free_port(), free_port()
    script = (recipe.replace("FLEET=/tmp/sdd-fleet", f"FLEET={fleet}")
              .replace("4222", str(nats_port)).replace("9788", str(metrics_port)))
    proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith(("SDD_", "NATS_"))})
    try:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out
        lines = [line.split("\t") for line in out.splitlines() if line.count("\t") == 3]
        assert sorted((host, what, status) for host, what, status, _ in lines) == [
            ("host-a", "Detection Finding: Create", "New"), ("host-a", "File Remediation Activity: Isolate", "Success"),
            ("host-b", "Detection Finding: Create", "New"), ("host-b", "File Remediation Activity: Isolate", "Success")]
        assert 'sdd_runs_total{status="completed",workflow="contain"} 1.0' in out
        assert "file 0 waiting (up), nats 0 waiting (up)" in out
        assert f"   2 {fleet}/host-a/events.ocsf.jsonl" in out and f"   2 {fleet}/host-b/events.ocsf.jsonl" in out
        assert not (fleet / "host-b" / "files" / "report.pdf.exe").exists()  # quarantined: the pushed detection
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(fleet.parent, ignore_errors=True)
