"""The commands docs/operations.md gives for ClamAV, run as written (with only the paths a test needs
changed): the clamd `VirusEvent` line is the one test_clamav.py configures, and the clamscan loop below
turns clamscan's report into correct spool detections, even for file names with spaces and ': '."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OPERATIONS = REPO / "docs" / "operations.md"
SDDCTL = Path(sys.executable).parent / "sddctl"
CLAMSCAN = shutil.which("clamscan")
SIGTOOL = shutil.which("sigtool")


def _blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", OPERATIONS.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_the_virusevent_line_is_the_one_the_end_to_end_test_uses() -> None:
    [block] = [b for b in _blocks() if "VirusEvent" in b]
    assert "echo 'VirusEvent /usr/libexec/sdd/sdd-virusevent' >> /etc/clamav/clamd.conf" in block
    # The packaged hook is the one `make hook` builds; tests/ingest/test_hook.py runs it under real clamd.
    e2e = (REPO / "tests" / "ingest" / "test_hook.py").read_text(encoding="utf-8")
    assert 'f"{hook} --spool {d.spool}"' in e2e
    assert "install -D -m 0755 build/sdd-virusevent debian/sdd-client/usr/libexec/sdd/sdd-virusevent" in (
        REPO / "packaging" / "debian" / "rules").read_text(encoding="utf-8")


@pytest.mark.skipif(CLAMSCAN is None or SIGTOOL is None, reason="ClamAV is not installed (clamav package)")
def test_the_clamscan_loop_submits_every_finding(tmp_path: Path) -> None:
    [block] = [b for b in _blocks() if b.startswith("clamscan --recursive")]
    scan, db, spool = tmp_path / "scan dir", tmp_path / "db", tmp_path / "spool"
    for d in (scan / "sub", db, spool / "tmp", spool / "new"):
        d.mkdir(parents=True)
    bad = [scan / "invoice: final.exe", scan / "sub" / "two words.scr"]
    for i, path in enumerate(bad):
        path.write_bytes(f"sample {i}\n".encode() * 50)
    (scan / "clean.txt").write_text("nothing to see\n")
    (db / "test.hdb").write_text("".join(
        subprocess.run([SIGTOOL, "--md5", str(p)], capture_output=True, text=True, check=True).stdout
        for p in bad))
    # As written, except: clamscan gets the test's database, scans the test's directory instead of
    # /home, and sddctl (the venv's) writes into the test's spool instead of /var/spool/sdd.
    script = (block.replace("clamscan --recursive", f"clamscan -d '{db}' --recursive", 1)
                   .replace(" /home \\", f" '{scan}' \\", 1)
                   .replace("sddctl submit", f"'{SDDCTL}' submit --spool '{spool}'", 1))
    result = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    detections = [json.loads(p.read_text()) for p in (spool / "new").iterdir()]
    assert sorted(d["file_path"] for d in detections) == sorted(str(p) for p in bad)
    for d in detections:
        assert d["type"] == "malware" and d["severity"] == "high" and d["scanner"] == "clamscan"
        assert d["threat_name"].endswith(".UNOFFICIAL")
    assert not list((spool / "tmp").iterdir())


APPARMOR_PARSER = shutil.which("apparmor_parser") or shutil.which("apparmor_parser", path="/usr/sbin:/sbin")
CLAMD_PROFILE = Path("/etc/apparmor.d/usr.sbin.clamd")


@pytest.mark.skipif(APPARMOR_PARSER is None or not CLAMD_PROFILE.exists(),
                    reason="needs apparmor_parser (apparmor) and clamd's profile (clamav-daemon)")
def test_the_apparmor_lines_compile_into_clamds_profile(tmp_path: Path) -> None:
    """The lines operations.md appends to clamd's local profile are valid AppArmor: Debian's clamd profile
    compiles with them (compiled only, -Q: the test machine's kernel need not have AppArmor)."""
    [block] = [b for b in _blocks() if "/etc/apparmor.d/local/usr.sbin.clamd" in b]
    match = re.search(r"printf '%s\\n' ((?:'[^']*' ?)+) >> /etc/apparmor.d/local/usr.sbin.clamd", block)
    assert match, block
    rules = re.findall(r"'([^']*)'", match.group(1))
    assert rules == ["/{usr/,}bin/dash ix,", "/usr/libexec/sdd/sdd-virusevent Ux,"]
    local = tmp_path / "local-usr.sbin.clamd"
    local.write_text("".join(f"{r}\n" for r in rules))
    profile = tmp_path / "usr.sbin.clamd"
    text = CLAMD_PROFILE.read_text()
    assert "#include <local/usr.sbin.clamd>" in text
    profile.write_text(text.replace("#include <local/usr.sbin.clamd>", f'#include "{local}"'))
    result = subprocess.run([APPARMOR_PARSER, "-Q", "-K", str(profile)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
