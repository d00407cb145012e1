"""The `sdd` console script: `sdd [--config FILE] [--user] [--foreground]` runs the daemon;
`sdd check-config` validates the config and every workflow, lists every problem and exits 0 or 1."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import signal
import sys
from collections.abc import Sequence

from . import __version__
from .config import Config, ConfigError, config_path, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdd", description="Search & Destroy response daemon: turns malware detections into safe, "
                                "audited responses.")
    parser.add_argument("command", nargs="?", choices=("run", "check-config", "executor"), default="run",
                        help="run the daemon (default), check the configuration and workflows, or run the "
                             "root executor (sdd-executor.service)")
    parser.add_argument("--config", metavar="FILE", help="config file (default: $SDD_CONFIG, else "
                        "/etc/sdd/sdd.toml, or $XDG_CONFIG_HOME/sdd/sdd.toml with --user)")
    parser.add_argument("--user", action="store_true",
                        help="user mode: XDG paths and the session bus instead of system paths")
    parser.add_argument("--foreground", action="store_true", default=True,
                        help="stay in the foreground (the default; sdd never forks)")
    parser.add_argument("--version", action="version", version=f"sdd {__version__}")
    return parser


def check_config(config_file: str | None, user: bool) -> int:
    """Prints every problem with the config and the workflows; 0 when there is none."""
    from .daemon.loading import load_actions, load_workflows

    path = config_path(config_file, user)
    try:
        config = load_config(config_file, user=user)
    except ConfigError as exc:
        for err in exc.errors:
            print(err, file=sys.stderr)
        print(f"{path}: {len(exc.errors)} error(s) in the configuration", file=sys.stderr)
        return 1
    _, actions, action_errors = load_actions(config, None, None)
    workflows, problems = load_workflows(config, actions)
    problems = list(action_errors) + problems
    for problem in problems:
        print(problem, file=sys.stderr)
    where = config.source or "built-in defaults"
    if problems:
        print(f"{where}: {len(problems)} problem(s); {len(workflows)} workflow(s) valid", file=sys.stderr)
        return 1
    print(f"{where}: OK; {len(workflows)} workflow(s): {', '.join(sorted(workflows)) or '-'}")
    return 0


def run_daemon(config: Config, config_file: str | None) -> int:
    from .daemon.lifecycle import Daemon
    from .logging import setup_logging

    setup_logging(config.logging.level, config.logging.target)
    # `kill -USR2 PID` prints every thread's stack to stderr: how to see what a stuck daemon is doing.
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    daemon = Daemon(config, config_path=config_file)
    return asyncio.run(daemon.serve())


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "executor":
        from .executor.service import main as executor_main
        return executor_main(["--config", args.config] if args.config else [])
    if args.command == "check-config":
        return check_config(args.config, args.user)
    try:
        config = load_config(args.config, user=args.user)
    except ConfigError as exc:
        for err in exc.errors:
            print(f"sdd: {err}", file=sys.stderr)
        print("sdd: refusing to start with an invalid configuration", file=sys.stderr)
        return 1
    try:
        start_executor(config)
    except (OSError, ValueError) as exc:
        print(f"sdd: {exc}", file=sys.stderr)
        return 1
    return run_daemon(config, args.config)


def start_executor(config: Config) -> None:
    """System mode started as root (not by systemd's units, which start both): fork the root executor and
    go on as `[actions] daemon_user` (docs/security.md). Returns in the daemon; the root side never does."""
    from .executor.spawn import SOCKET_ENV, StartError, separate

    if os.geteuid() != 0 or config.user_mode or not config.actions.daemon_user or os.environ.get(SOCKET_ENV):
        return
    try:
        separate(config)
    except StartError as exc:
        raise ValueError(str(exc)) from None


if __name__ == "__main__":
    sys.exit(main())
