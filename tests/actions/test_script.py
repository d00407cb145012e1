"""run_script: only root-owned executables inside scripts_dir, argv/env/stdin, timeouts kill the group."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from sdd.engine import ActionError, Forbidden, InvalidParams, NotFound, RunStatus

from .conftest import Env

ECHO = f"""#!{sys.executable}
import json, os, sys
data = sys.stdin.read()
print(json.dumps({{"argv": sys.argv[1:], "key": os.environ.get("SDD_IDEMPOTENCY_KEY"),
                  "threat": os.environ.get("THREAT"), "stdin": json.loads(data) if data else None,
                  "path": os.environ.get("PATH")}}))
"""


def script(env: Env, name: str, body: str, mode: int = 0o755) -> Path:
    path = env.scripts / name
    path.write_text(body)
    os.chmod(path, mode)
    return path


async def test_runs_script_with_argv_env_stdin_and_idempotency_key(env: Env) -> None:
    script(env, "echo.py", ECHO)
    params = {"script": "echo.py", "args": ["{{ detection.file_path }}", 42],
              "env": {"THREAT": "{{ detection.threat_name }}"}, "stdin": {"d": "{{ detection.file_path }}"}}
    hostile = "/home/a/$(reboot); `id` 'x'.exe"
    result = await env.step("run_script", params, detection={"file_path": hostile, "threat_name": "T;ls"})
    assert result.status is RunStatus.COMPLETED, result.error
    out = result.step_results["s"].result
    assert out["argv"] == [hostile, "42"]
    assert out["threat"] == "T;ls" and out["stdin"] == {"d": hostile}
    assert out["key"] == f"{result.run_id}:s"


async def test_non_json_output_gives_tails(env: Env) -> None:
    script(env, "noisy.sh", "#!/bin/sh\nhead -c 3000000 /dev/zero | tr '\\0' 'a'\necho done >&2\n")
    res = await env.call("run_script", script="noisy.sh")
    assert res["exit_code"] == 0 and res["stdout_truncated"] is True
    assert len(res["stdout"]) <= 16 * 1024 and res["stderr"] == "done\n"


async def test_exit_codes_decide_retry(env: Env) -> None:
    script(env, "temp.sh", "#!/bin/sh\necho busy >&2\nexit 75\n")
    script(env, "fail.sh", "#!/bin/sh\necho broken >&2\nexit 3\n")
    with pytest.raises(ActionError, match="status 75") as err:
        await env.call("run_script", script="temp.sh")
    assert err.value.retryable
    with pytest.raises(ActionError, match="broken") as err:
        await env.call("run_script", script="fail.sh")
    assert not err.value.retryable


def _wait_pid_file(path: Path) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.01)
    raise AssertionError("the script never wrote its child's pid")


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_timeout_kills_the_whole_process_group(env: Env) -> None:
    pidfile = env.tmp / "child.pid"
    script(env, "hang.sh", f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nwait\n")
    with pytest.raises(ActionError, match="timed out"):
        await env.call("run_script", script="hang.sh", timeout=0.5)
    child = _wait_pid_file(pidfile)
    deadline = time.monotonic() + 10
    while not _dead(child) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert _dead(child)


async def test_cancellation_kills_the_whole_process_group(env: Env) -> None:
    pidfile = env.tmp / "child.pid"
    script(env, "hang.sh", f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nwait\n")
    task = asyncio.ensure_future(env.call("run_script", script="hang.sh", timeout=300))
    child = await asyncio.to_thread(_wait_pid_file, pidfile)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 10
    while not _dead(child) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert _dead(child)


async def test_refuses_scripts_outside_scripts_dir(env: Env) -> None:
    outside = env.outside / "evil.sh"
    outside.write_text("#!/bin/sh\ntouch /tmp/sdd-should-not-exist\n")
    os.chmod(outside, 0o755)
    os.symlink(outside, env.scripts / "link.sh")
    for name in (str(outside), "../outside/evil.sh", "link.sh", "/bin/sh", str(env.scripts)):
        with pytest.raises(Forbidden, match="not inside scripts_dir|regular file"):
            await env.call("run_script", script=name)
    assert not Path("/tmp/sdd-should-not-exist").exists()


async def test_refuses_writable_or_non_executable_or_foreign_scripts(env: Env) -> None:
    script(env, "gw.sh", "#!/bin/sh\n", mode=0o775)
    script(env, "noexec.sh", "#!/bin/sh\n", mode=0o644)
    foreign = script(env, "foreign.sh", "#!/bin/sh\n")
    os.chown(foreign, 1000, 1000)
    with pytest.raises(Forbidden, match="writable by group or others"):
        await env.call("run_script", script="gw.sh")
    with pytest.raises(Forbidden, match="not executable"):
        await env.call("run_script", script="noexec.sh")
    with pytest.raises(Forbidden, match="owned by uid 1000"):
        await env.call("run_script", script="foreign.sh")
    os.chmod(env.scripts, 0o777)
    script(env, "ok.sh", "#!/bin/sh\n")
    with pytest.raises(Forbidden, match="writable by group or others"):
        await env.call("run_script", script="ok.sh")


@pytest.mark.parametrize("params, message", [
    ({}, "'script': is required"), ({"script": 1}, "expected a string"),
    ({"script": "x", "args": "a b"}, "expected a list"), ({"script": "x", "args": [{"a": 1}]}, "item 0"),
    ({"script": "x", "env": {"LD_PRELOAD": "/tmp/x.so"}}, "LD_PRELOAD may not be set"),
    ({"script": "x", "env": {"BAD NAME": "1"}}, "invalid name"),
    ({"script": "x", "timeout": -1}, "timeout")])
async def test_bad_parameters(env: Env, params: dict, message: str) -> None:
    with pytest.raises(InvalidParams, match=message):
        await env.call("run_script", **params)


async def test_missing_script(env: Env) -> None:
    with pytest.raises(NotFound, match="no script"):
        await env.call("run_script", script="nope.sh")


async def test_stdout_too_deep_to_keep_is_kept_as_text_and_the_script_succeeds(env: Env) -> None:
    # json.loads raised RecursionError: a script that had run (and exited 0) was recorded as failed.
    script(env, "deep.sh", "#!/bin/sh\nhead -c 50000 /dev/zero | tr '\\0' '['\n")
    result = await env.step("run_script", {"script": "deep.sh"})
    assert result.status is RunStatus.COMPLETED, result.error
    out = result.step_results["s"].result
    assert out["exit_code"] == 0 and not out["stdout_truncated"] and out["stdout"] == "[" * 16 * 1024  # (its tail)
    nested = '{"a": ' * 65 + "1" + "}" * 65
    script(env, "nested.sh", f"#!/bin/sh\necho '{nested}'\n")
    assert (await env.call("run_script", script="nested.sh"))["exit_code"] == 0  # not parsed: 65 levels
    bound = '{"a": ' * 64 + "1" + "}" * 64
    script(env, "bound.sh", f"#!/bin/sh\necho '{bound}'\n")
    assert await env.call("run_script", script="bound.sh") == json.loads(bound)


async def test_json_stdout_becomes_result(env: Env) -> None:
    script(env, "j.sh", "#!/bin/sh\necho '{\"isolated\": true, \"hosts\": 3}'\n")
    assert await env.call("run_script", script="j.sh") == {"isolated": True, "hosts": 3}
    assert json.dumps(await env.call("run_script", script="j.sh"))
