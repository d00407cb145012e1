"""Hostile parameters, generated: every action either succeeds or fails with one of the engine's action
errors (a clear message, retry decided) — never a TypeError/KeyError from deep inside — and the files
in the allowed root stay as they were."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdd.engine import ActionError

from .conftest import Env, snapshot

KEYS = {
    "quarantine_file": ["file_path", "quarantine_dir", "threat_name", "detection_id"],
    "restore_file": ["quarantine_id", "file_path", "on_conflict", "force"],
    "delete_file": ["file_path"],
    "send_notification": ["message", "title", "urgency", "recipient"],
    "run_scan": ["path", "scan_type", "timeout"],
    "update_definitions": ["timeout"],
    "generate_report": ["report_type", "format", "include_context", "steps"],
    "call_webhook": ["url", "payload", "method", "headers", "timeout"],
    "run_script": ["script", "args", "env", "stdin", "timeout"],
    "add_exclusion": ["sha256", "path", "reason"],
    "remove_exclusion": ["sha256", "path"],
    "log_false_positive": ["detection_id", "file_path", "sha256", "reason"],
    "kill_process": ["process_id", "process_start_time", "include_children", "timeout", "file_path",
                     "quarantine_id", "trust_process_id"],
}

leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                 st.text(max_size=40), st.sampled_from(["/", "..", "/tmp/../etc/passwd", "file:///etc/shadow",
                                                        "http://", "\x00", "-rf", "a" * 5000, "0" * 32]))
values = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=4), max_leaves=8)


def params_for(action: str) -> st.SearchStrategy[dict[str, Any]]:
    keys = st.sampled_from(KEYS[action] + ["bogus"])
    vals = values
    if action == "kill_process":
        # Never a real pid: a fuzzer must not kill the machine's processes.
        vals = values.filter(lambda v: not (isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**23)
                             and not (isinstance(v, str) and v.strip().isdigit())
                             and not (isinstance(v, float) and v.is_integer()))
    if action in ("call_webhook", "send_notification"):
        # No network: URLs and recipients stay invalid or point nowhere routable.
        vals = values.filter(lambda v: not (isinstance(v, str) and ("://" in v or "@" in v)))
    return st.dictionaries(keys, vals, max_size=4)


@pytest.fixture(scope="module")
def fuzz_env() -> Iterator[Env]:
    tmp = Path(tempfile.mkdtemp(prefix="sdd-fuzz-"))
    env = Env(tmp, scanner=(sys.executable, "-c", "pass"), updater=(sys.executable, "-c", "pass"))
    (env.root / "keep.txt").write_text("keep")
    try:
        yield env
    finally:
        shutil.rmtree(tmp)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=st.sampled_from(sorted(KEYS)).flatmap(lambda a: st.tuples(st.just(a), params_for(a))))
def test_hostile_parameters_fail_cleanly(fuzz_env: Env, case: tuple[str, dict[str, Any]]) -> None:
    action, params = case
    before = snapshot(fuzz_env.root)

    async def call() -> Any:
        return await fuzz_env.actions[action].handler(**params, context={})
    try:
        result = asyncio.run(call())
    except ActionError:
        pass
    else:
        assert isinstance(result, dict)
    assert snapshot(fuzz_env.root) == before
