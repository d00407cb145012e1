"""docs/sources.md's hook-up lines, run as far as this machine allows (paths changed to the test's): the
falco.yaml program line fed Falco's alerts, the Wazuh wrapper driven as execd drives it, the ossec.conf
blocks parsed and tied to the wrapper, and the cron'd yara scan on real files."""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tests.ingest.conftest import SDD_INGEST, spool_detections
from tests.ingest.test_falco import alert
from tests.ingest.test_wazuh import Execd, fim

SOURCES = Path(__file__).resolve().parents[2] / "docs" / "sources.md"


def blocks(kind: str) -> list[str]:
    """The fenced blocks of docs/sources.md whose info string is `kind` ("" for none)."""
    found, current, lang = [], None, ""
    for line in SOURCES.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, lang = [], line[3:].strip()
            else:
                if lang == kind:
                    found.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return found


def test_the_falco_yaml_lines_run_one_process_for_the_stream(spool: Path) -> None:
    [block] = [b for b in blocks("yaml") if "program_output" in b]
    config = yaml.safe_load(block)
    assert config["json_output"] is True and config["buffered_outputs"] is False
    output = config["program_output"]
    assert output["enabled"] is True and output["keep_alive"] is True
    assert output["program"] == "/usr/bin/sdd-ingest --format falco"
    # What falco_response's trusted kill needs in every syscall alert's output_fields.
    [extra] = config["append_output"]
    assert extra["match"] == {"source": "syscall"}
    assert {"proc.pid", "proc.pid.ts", "proc.exepath"} <= set(extra["extra_fields"])
    # Falco popen()s the program through a shell and writes each alert as one line.
    program = output["program"].replace("/usr/bin/sdd-ingest", SDD_INGEST) + f" --spool {spool}"
    lines = b"".join(json.dumps(alert(rule=f"R{i}")).encode() + b"\n" for i in range(3))
    r = subprocess.run(["/bin/sh", "-c", program], input=lines, capture_output=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert [d["threat_name"] for d in spool_detections(spool)] == ["R0", "R1", "R2"]


def test_the_wazuh_wrapper_answers_execd(tmp_path: Path, spool: Path) -> None:
    [block] = [b for b in blocks("sh") if "/var/ossec/active-response/bin/sdd" in b]
    install = block.splitlines()[0]
    wrapper = tmp_path / "sdd"
    script = install.replace("/var/ossec/active-response/bin/sdd", str(wrapper)).replace(
        "/usr/bin/sdd-ingest --format wazuh", f"{SDD_INGEST} --format wazuh --spool {spool}")
    subprocess.run(["/bin/sh", "-c", script], check=True, timeout=60)
    wrapper.chmod(0o750)
    execd = Execd(spool)
    execd.proc.kill()  # replace the direct invocation by the wrapper, as execd runs it
    execd.proc.wait()
    execd.proc = subprocess.Popen([str(wrapper)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
    message = fim()
    execd.send(message)
    assert execd.read_keys()["command"] == "check_keys"
    execd.answer(message, "continue")
    assert execd.finish()[0] == 0
    assert [d["type"] for d in spool_detections(spool)] == ["wazuh"]


def test_the_ossec_conf_blocks_name_the_wrapper() -> None:
    [block] = [b for b in blocks("xml") if "<active-response>" in b]
    root = ET.fromstring(f"<ossec_config>{block}</ossec_config>")
    command = root.find("command")
    response = root.find("active-response")
    assert command is not None and response is not None
    assert command.findtext("executable") == "sdd"  # /var/ossec/active-response/bin/sdd, the wrapper
    assert response.findtext("command") == command.findtext("name")
    assert response.findtext("disabled") == "no" and response.findtext("location") == "local"
    assert int(response.findtext("timeout") or 0) > 0 and command.findtext("timeout_allowed") == "yes"


@pytest.mark.skipif(shutil.which("yara") is None, reason="yara is not installed")
def test_the_cron_line_scans_and_feeds_the_spool(tmp_path: Path, spool: Path) -> None:
    [line] = [b.strip() for b in blocks("") if b.strip().startswith("17 3 * * * root /usr/bin/yara")]
    fields = line.split(None, 6)
    assert fields[:6] == ["17", "3", "*", "*", "*", "root"] and "%" not in fields[6]  # % is special to cron
    rules = tmp_path / "rules.yar"
    rules.write_text('rule Dropper : malware { meta: severity = "critical" strings: $a = "SDD-DROPPER" '
                     "condition: $a }\n")
    home = tmp_path / "home"
    (home / "eve").mkdir(parents=True)
    (home / "eve" / "dropper.bin").write_bytes(b"xx SDD-DROPPER xx")
    (home / "eve" / "notes.txt").write_text("fine")
    (home / "eve" / "link").symlink_to("/etc/hostname")  # -N: not followed out of the tree
    command = (fields[6].replace("/usr/bin/yara", shutil.which("yara") or "yara")
               .replace("/etc/sdd/yara/rules.yar", str(rules)).replace(" /home ", f" {home} ")
               .replace("/usr/bin/sdd-ingest --format yara", f"{SDD_INGEST} --format yara --spool {spool}"))
    r = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    [d] = spool_detections(spool)
    assert d["file_path"] == str(home / "eve" / "dropper.bin") and d["severity"] == "critical"
    assert d["yara"]["rules"][0]["tags"] == ["malware"]
