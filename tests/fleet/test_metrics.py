"""Prometheus metrics from a running daemon: scraped over HTTP and parsed with prometheus_client's parser; the
counters match runs.stats (also across a restart), and the node_exporter textfile is written whole."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonProcess

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

MIXED = """workflow_id: mixed
trigger: {type: malware}
steps:
  - step_id: note
    action: send_notification
    params: {message: "{{ detection.file_path }}", channel: log}
  - step_id: fail_on_demand
    action: restore_file
    condition: 'detection.get("fail") is not None'
    params: {quarantine_id: "not-an-id"}
"""

DELETE = """workflow_id: remove
trigger: {type: junk}
steps:
  - step_id: delete
    action: delete_file
    params: {file_path: "{{ detection.file_path }}"}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, list[Any]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found)


def test_scraped_counters_match_runs_stats(tmp_path: Path) -> None:
    port = free_port()
    textfile = tmp_path / "textfile" / "sdd.prom"
    textfile.parent.mkdir()
    d = DaemonProcess(tmp_path, workflows={"mixed": MIXED, "remove": DELETE},
                      config_overrides={"metrics": {"listen": f"127.0.0.1:{port}", "textfile": str(textfile),
                                                    "textfile_interval": 0.2},
                                        "actions": {"rate_limits": {"delete_file": [0, 60]}}})
    with d:
        for i in range(6):
            d.drop({"type": "malware", "file_path": f"/tmp/m{i}", **({"fail": 1} if i % 3 == 0 else {})})
        (d.root / "junk.bin").write_bytes(b"junk")
        d.drop({"type": "junk", "file_path": str(d.root / "junk.bin")})
        d.drop(b"not json at all")
        with d.client() as c:
            c.call("detections.submit", detection={"type": "malware", "file_path": "/tmp/api"})
        d.wait_for(lambda: d.count("SELECT count(*) FROM runs WHERE finished_at IS NOT NULL") == 8, 30)
        d.wait_for(lambda: d.spool_files("rejected"), 30)
        with d.client() as c:
            stats = {s["workflow_id"]: s for s in c.call("runs.stats")["items"]}
        samples = d.wait_for(lambda: (s := scrape(port)) and value(s, "sdd_runs_total") == 8 and s, 30)
        for wf, row in stats.items():
            for status in ("completed", "failed", "rolled_back", "cancelled", "interrupted"):
                assert value(samples, "sdd_runs_total", workflow=wf, status=status) == row[status], (wf, status)
        assert stats["mixed"]["failed"] == 2 and stats["remove"]["failed"] == 1
        assert value(samples, "sdd_detections_total", source="spool", outcome="accepted") == 7
        assert value(samples, "sdd_detections_total", source="api", outcome="accepted") == 1
        assert value(samples, "sdd_detections_total", source="spool", outcome="rejected") == 1
        assert value(samples, "sdd_guard_refusals_total", action="delete_file") == 1
        assert value(samples, "sdd_step_duration_seconds_count", action="send_notification") == 7
        assert value(samples, "sdd_up") == 1
        assert [s.labels["version"] for s in samples["sdd_build_info"]] == ["0.1.0"]
        assert "sdd_spool_depth" in samples and "sdd_quarantine_items" in samples
        assert d.wait_for(lambda: textfile.exists() and "sdd_runs_total" in textfile.read_text(), 10)
        assert not [p for p in textfile.parent.iterdir() if p != textfile]  # written by rename: no leftovers
        d.stop()
        d.start()  # a restart: the counters start where runs.stats is
        samples = scrape(port)
        for wf, row in stats.items():
            assert value(samples, "sdd_runs_total", workflow=wf, status="completed") == row["completed"]
