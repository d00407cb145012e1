"""run_script runs root code only through root-owned paths: `scripts_dir` as configured and the script, each
directory from / on the way, symlinks resolved, must be root's and writable by no one else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sdd.engine import Forbidden

from .conftest import Env

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ownership rules are about root; needs root")


def _script(directory: Path, name: str = "hello.sh") -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\necho '{\"ok\": true}'\n")
    path.chmod(0o755)
    return path


async def test_a_script_on_a_trusted_path_runs(env: Env) -> None:
    _script(env.scripts)
    assert await env.call("run_script", script="hello.sh") == {"ok": True}


async def test_a_scripts_dir_reached_through_a_symlink_in_tmp_is_refused(env: Env, tmp_path: Path) -> None:
    _script(env.scripts)
    tmp_path.chmod(0o1777)
    link = tmp_path / "scripts"
    link.symlink_to(env.scripts)
    env.configure(scripts_dir=link)
    with pytest.raises(Forbidden, match="run_script: /tmp is writable by everyone"):
        await env.call("run_script", script="hello.sh")


async def test_a_group_writable_or_foreign_directory_above_scripts_dir_is_refused(env: Env) -> None:
    inner = env.scripts / "inner"
    inner.mkdir(mode=0o755)
    _script(inner)
    env.configure(scripts_dir=inner)
    assert await env.call("run_script", script="hello.sh") == {"ok": True}
    env.scripts.chmod(0o775)
    with pytest.raises(Forbidden, match=f"{env.scripts} is writable by its group"):
        await env.call("run_script", script="hello.sh")
    env.scripts.chmod(0o755)
    os.chown(env.scripts, 1000, 0)
    with pytest.raises(Forbidden, match=f"{env.scripts} is owned by uid 1000"):
        await env.call("run_script", script="hello.sh")


async def test_user_mode_accepts_the_users_own_paths_under_sticky_tmp(env: Env, tmp_path: Path) -> None:
    scripts = tmp_path / "mine"
    scripts.mkdir(mode=0o755)
    _script(scripts)
    env.configure(scripts_dir=scripts, user_mode=True)
    assert await env.call("run_script", script="hello.sh") == {"ok": True}
    env.configure(scripts_dir=scripts, user_mode=False)
    with pytest.raises(Forbidden, match="/tmp is writable by everyone"):
        await env.call("run_script", script="hello.sh")
