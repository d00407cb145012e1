"""A real ClamAV outbreak, contained in full with the default config (issue 13): one `clamdscan --multiscan`
of a directory of 150 infected files, clamd's VirusEvent being sdd's hook (`build/sdd-virusevent`, as
docs/operations.md says), the daemon running the shipped `critical_threat_response` template with the
default rate limits. Every file ends up in the vault and gone from disk. No timing is asserted (bench/outbreak.py
measures it)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_clamav import (  # noqa: F401  (smtp, workdir: fixtures)
    CLAMD,
    CLAMDSCAN,
    MALWARE,
    REPO,
    SIGTOOL,
    TEMPLATE,
    WAIT,
    Clamd,
    _Inbox,
    _run,
    _sddctl,
    _until,
    smtp,
    workdir,
)
from tests.support.daemon import DaemonProcess

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(None in (CLAMD, CLAMDSCAN, SIGTOOL),
                                 reason="ClamAV is not installed (tests/system-deps.sh)")]

N = 150
HOOK = REPO / "build" / "sdd-virusevent"


def _hook() -> Path:
    if not HOOK.exists():
        subprocess.run(["make", "-s", "-C", str(REPO), "hook"], check=True, capture_output=True, timeout=300)
    return HOOK


async def test_a_150_file_outbreak_is_contained_in_full_with_the_default_config(
    workdir: Path, tmp_path: Path, smtp: tuple[_Inbox, int],  # noqa: F811
) -> None:
    _, smtp_port = smtp
    outbreak = workdir / "home" / "alice" / "outbreak"
    outbreak.mkdir(parents=True)
    files = [outbreak / f"infected-{i:03d}.exe" for i in range(N)]
    for f in files:
        f.write_bytes(MALWARE)
    daemon = DaemonProcess(
        tmp_path,
        workflows={"critical_threat_response": TEMPLATE.read_text(encoding="utf-8")},
        config_overrides={
            "logging": {"level": "warning"},
            # No [actions.rate_limits]: the defaults are what is under test.
            "actions": {"allowed_roots": [str(workdir / "home")],
                        "smtp": {"host": "127.0.0.1", "port": smtp_port, "from": "sdd@localhost"}},
        },
    )
    assert "rate_limits" not in daemon.config["actions"]
    spool = Path(daemon.config["paths"]["spool"])
    clamd = Clamd(workdir, files[0], spool)
    conf = [line for line in clamd.conf.read_text().splitlines() if not line.startswith("VirusEvent ")]
    clamd.conf.write_text("\n".join([*conf, f"VirusEvent {_hook()} --spool {spool}", "MaxThreads 4", ""]))
    try:
        daemon.start()
        clamd.start()
        await clamd.wait_ready()

        scan = await _run([CLAMDSCAN, "-c", str(clamd.conf), "--multiscan", "--no-summary", str(outbreak)],
                          timeout=WAIT * 4)
        assert scan.returncode == 1, scan.stdout[-2000:] + scan.stderr + clamd.output()[-2000:]
        assert scan.stdout.count(" FOUND") == N

        async def all_finished() -> Any:
            page = await _sddctl(daemon, "history", "--workflow", "critical_threat_response", "--limit", str(N + 10))
            done = [r for r in page["items"] if r["status"] not in ("pending", "running")]
            return done if len(done) >= N else None

        runs = await _until(all_finished, f"{N} finished runs", daemon, clamd)
        assert {r["status"] for r in runs} == {"completed"}, {r["status"] for r in runs}
        assert not [f for f in files if os.path.lexists(f)], "every infected file is gone from disk"
        listing = await _sddctl(daemon, "quarantine", "list", "--limit", str(N + 10))
        vaulted = {i["original_path"] for i in listing["items"] if not i.get("restored_at")}
        assert vaulted >= {str(f) for f in files}
        status = await _sddctl(daemon, "status")
        assert status["guards"]["waiting"] == {}
        assert "guard refused" not in daemon.log()
    finally:
        clamd.stop()
        await asyncio.to_thread(daemon.close)
