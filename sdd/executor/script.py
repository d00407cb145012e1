"""`run_script` on the root side: run an executable from `scripts_dir`, and only from there, with an argv.

The daemon's handler has resolved and checked the script (`sdd/actions/script.py`); this checks again, on
its own configuration: the real path lies inside the real `scripts_dir`, is a regular executable file,
and in system mode every component from `/` is root's and writable by no one else
(`safepath.not_root_owned`). The environment is the request's, with names checked again (no loader or
interpreter variables). Not idempotent: a lost executor mid-script is an unknown outcome (see client.py).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import Forbidden, InvalidRequest, NotFound
from .policy import Policy
from .protocol import RunScript
from .safepath import not_root_owned
from .subproc import run_argv

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Variables that change how the loader or an interpreter behaves: a detection value must never set them.
DANGEROUS_ENV = re.compile(r"^(LD_.*|BASH_ENV|ENV|BASH_FUNC_.*|IFS|PYTHON(PATH|STARTUP|HOME|INSPECT)|"
                           r"PERL5(LIB|OPT)|RUBYOPT|RUBYLIB|NODE_OPTIONS|SHELLOPTS|PS4|GCONV_PATH)$")
SDD_ENV = ("SDD_IDEMPOTENCY_KEY", "SDD_RUN_ID", "SDD_STEP_ID", "SDD_WORKFLOW_ID")


def checked_script(policy: Policy, script: str) -> str:
    if not policy.scripts_dir:
        raise Forbidden("run_script: no scripts_dir is configured")
    base = os.path.realpath(policy.scripts_dir)
    real = os.path.realpath(script if script.startswith("/") else os.path.join(base, script))
    if os.path.commonpath([base, real]) != base or real == base:
        raise Forbidden(f"run_script: {script!r:.200} is not inside scripts_dir {policy.scripts_dir}")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise NotFound(f"run_script: no script {script!r:.200} in {policy.scripts_dir}") from None
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
        raise Forbidden(f"run_script: {real} is not an executable regular file")
    if not policy.user_mode and (why := not_root_owned(real)):
        raise Forbidden(f"run_script: {why}: a script and every directory above it must be root's")
    return real


def checked_env(env: dict[str, str]) -> dict[str, str]:
    for name in env:
        if name in SDD_ENV:
            continue
        if not ENV_NAME.fullmatch(name) or DANGEROUS_ENV.match(name) or name.startswith("SDD_"):
            raise InvalidRequest(f"run_script: env: {name!r:.80} may not be set")
    return env


async def run(policy: Policy, req: RunScript, before_act: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    real = checked_script(policy, req.script)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "HOME": os.environ.get("HOME", "/root") if policy.user_mode else "/root", **checked_env(dict(req.env))}
    stdin = req.stdin.encode() if req.stdin is not None else None
    await before_act()
    done = await run_argv([real, *req.args], timeout=req.timeout, env=env, stdin=stdin, cwd=os.path.dirname(real),
                          what="run_script")
    return {"script": real, "returncode": done.returncode, "stdout_head": bytes(done.stdout_head),
            "stdout_truncated": done.stdout_truncated, "stdout_tail": done.stdout_tail,
            "stderr_tail": done.stderr_tail}
