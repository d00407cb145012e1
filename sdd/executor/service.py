"""Running the executor: its policy from its own config, its server on a listening socket, until SIGTERM.

Used by the supervisor's executor child (`spawn.py`) and by `sdd-executor.service` (`python -m
sdd.executor --config FILE`, socket from systemd's `LISTEN_FDS`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pwd
import signal
import socket
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from .policy import Policy
from .server import ExecutorServer

log = logging.getLogger("sdd.executor")


def policy_of(config: Any, pids: Iterable[int] = ()) -> Policy:
    return Policy.build(config.actions.allowed_roots, config.paths.state / "vault",
                        config.actions.protected_processes, pids, scripts_dir=config.actions.scripts_dir,
                        user_mode=config.actions.user_mode, scanner=config.actions.scanner,
                        yara_rules=config.actions.yara_rules)


def serve_forever(config: Any, listener: socket.socket, uid: int, pids: Iterable[int] = ()) -> None:
    asyncio.run(_serve(policy_of(config, pids), listener, uid))


async def _serve(policy: Policy, listener: socket.socket, uid: int) -> None:
    server = ExecutorServer(policy, uid)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start(listener)
    log.info("executor serving uid %d (pid %d)", uid, os.getpid())
    await stop.wait()
    await server.close()


def main(argv: Sequence[str] | None = None) -> int:
    from sdd.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="sdd-executor", description="sdd's root executor (systemd unit)")
    parser.add_argument("--config", metavar="FILE")
    parser.add_argument("--uid", type=int, help="the uid served (default: the daemon_user's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="sdd-executor: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for err in exc.errors:
            print(f"sdd-executor: {err}", file=sys.stderr)
        return 1
    uid = args.uid if args.uid is not None else pwd.getpwnam(config.actions.daemon_user).pw_uid
    fds = int(os.environ.get("LISTEN_FDS", "0")) if os.environ.get("LISTEN_PID") == str(os.getpid()) else 0
    if fds != 1:
        print("sdd-executor: expected one socket from systemd (sdd-executor.socket)", file=sys.stderr)
        return 1
    listener = socket.socket(fileno=3)
    serve_forever(config, listener, uid)
    return 0
