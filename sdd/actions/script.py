"""`run_script`: run an executable from `scripts_dir` — and only from there — with an argv list.

The script's resolved path must lie inside the resolved `scripts_dir`, be a regular executable file, and
it, `scripts_dir` as configured and every directory above them (symlinks resolved, see
`sdd.engine.path_problem`) must be root-owned and not writable by group or others: otherwise a non-root
user could change what root runs. In user mode the user may own them too, and sticky directories such as
/tmp are allowed on the way. Detection values reach the script only as argv
items, environment variables (names from the workflow, never from the detection) or JSON on stdin.
The environment is minimal plus `SDD_IDEMPOTENCY_KEY`, `SDD_RUN_ID`, `SDD_STEP_ID`, `SDD_WORKFLOW_ID`.

Exit 0 succeeds; a JSON object on stdout becomes the result. Exit 75 (EX_TEMPFAIL) is a retryable
failure, any other non-zero status a non-retryable one. Not idempotent (see the contract's crash rules).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from typing import Any

from sdd.engine import path_problem
from sdd.executor import RunScript
from sdd.executor.script import DANGEROUS_ENV, ENV_NAME

from . import runinfo
from .errors import ActionError, Forbidden, NotFound
from .executing import execute
from .params import Params, plain
from .replies import parse_reply
from .services import ActionServices

EX_TEMPFAIL = 75


def resolve_script(services: ActionServices, name: str) -> str:
    """The script's real path, after every check; raises Forbidden/NotFound naming what is wrong."""
    base = os.path.realpath(services.config.scripts_dir)
    candidate = name if name.startswith("/") else os.path.join(base, name)
    real = os.path.realpath(candidate)
    if os.path.commonpath([base, real]) != base or real == base:
        raise Forbidden(f"run_script: {name!r:.200} is not inside scripts_dir {services.config.scripts_dir}")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise NotFound(f"run_script: no script {name!r:.200} in {services.config.scripts_dir}") from None
    if not stat.S_ISREG(st.st_mode):
        raise Forbidden(f"run_script: {real} is not a regular file")
    if not st.st_mode & 0o111:
        raise Forbidden(f"run_script: {real} is not executable")
    user_mode = services.config.user_mode
    owners = {0} if not user_mode else {0, os.geteuid()}
    # The configured scripts_dir as written (its symlinks, and where they sit) and the script itself.
    for checked in (os.path.abspath(services.config.scripts_dir), real):
        reason = path_problem(checked, owners=owners, allow_sticky=user_mode)
        if reason:
            raise Forbidden(f"run_script: {reason}: a script and every directory above it must be root's and "
                            f"not writable by group or others, or a non-root user could change what runs")
    return real


async def run_script(services: ActionServices, *, context: dict[str, Any] | None = None,
                     **params: Any) -> dict[str, Any]:
    p = Params("run_script", params)
    name = p.req_string("script", max_len=4096)
    args = p.str_list("args")
    extra_env = p.str_map("env", key_pattern=ENV_NAME.pattern)
    for env_name in extra_env:
        if DANGEROUS_ENV.match(env_name) or env_name.startswith("SDD_"):
            raise p.fail("env", f"{env_name} may not be set by a workflow")
    timeout = p.number("timeout", default=60.0, minimum=0.1, maximum=3600.0)
    assert timeout is not None
    stdin: str | None = None
    if "stdin" in p.raw and p.raw["stdin"] is not None:
        try:
            stdin = json.dumps(plain(p.raw["stdin"]), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise p.fail("stdin", f"is not JSON-serialisable: {exc}") from None
    real = await asyncio.to_thread(resolve_script, services, name)
    run_id, step_id, key = runinfo.ids()
    info = runinfo.step()
    env = {**extra_env, "SDD_IDEMPOTENCY_KEY": key or "", "SDD_RUN_ID": run_id or "",
           "SDD_STEP_ID": step_id or "", "SDD_WORKFLOW_ID": info.workflow_id if info else ""}
    if runinfo.dry_run():
        return {"dry_run": True, "would": f"run {real} {' '.join(args)}", "script": real}
    # The executor checks the script again and runs it (as root in system mode).
    done = (await execute(services, RunScript(real, tuple(args), env, stdin, timeout))).value
    if done["returncode"] != 0:
        raise ActionError(
            f"run_script: {os.path.basename(real)} exited with status {done['returncode']}: "
            f"{str(done['stderr_tail']).strip()[-500:]!r}", retryable=done["returncode"] == EX_TEMPFAIL)
    if not done["stdout_truncated"]:
        parsed, _ = parse_reply(done["stdout_head"])
        if isinstance(parsed, dict):
            return parsed
    return {"exit_code": 0, "script": real, "stdout": done["stdout_tail"], "stderr": done["stderr_tail"],
            "stdout_truncated": done["stdout_truncated"]}
