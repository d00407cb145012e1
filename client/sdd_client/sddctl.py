"""`sddctl`: the command line of the sdd daemon (argument parsing, exit codes, error reporting).

Every command takes `--json` (one JSON document on stdout; `watch` prints one per line) and exits 0 on
success, 1 on a failed operation, 2 on a usage error, 3 when the daemon cannot be reached. What each
command does and prints lives in commands.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import commands, validate_detection
from .errors import ApiError, ClientError, DaemonUnreachable

RUN_STATUSES = ("pending", "running", "completed", "failed", "rolled_back", "cancelled", "interrupted")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        if "--json" in sys.argv[1:]:  # the promised single JSON document, even for a usage error
            json.dump({"error": {"code": "usage", "message": message}}, sys.stdout)
            sys.stdout.write("\n")
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # SUPPRESS: a value given before the command is not reset by the subcommand's default.
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output: one JSON document on stdout")
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                        help="the daemon's socket (default: $SDD_SOCKET, /run/sdd/sdd.sock, the user socket)")
    common.add_argument("--timeout", type=float, metavar="SECONDS", default=argparse.SUPPRESS,
                        help="how long to wait for a reply (default 60)")

    parser = _Parser(prog="sddctl", description="Control the sdd response daemon.", parents=[common])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, help_: str, **kw: object) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, parents=[common], **kw)  # type: ignore[arg-type]

    add("status", "show the daemon's state")
    add("workflows", "list the loaded workflows")
    p = add("show-workflow", "show one workflow and its steps")
    p.add_argument("workflow_id", metavar="ID")
    p = add("validate", "check workflow files with the daemon's validator")
    p.add_argument("files", metavar="FILE", nargs="+")
    validate_detection.add_arguments(add("validate-detection", "check detection files against the spool schema"))
    p = add("run", "start a workflow")
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="context value (VALUE is parsed as JSON when it is valid JSON); repeatable")
    p.add_argument("--wait", action="store_true", help="show each step as it finishes, then the outcome")
    p.add_argument("--dry-run", action="store_true", help="plan only: show what would run, change nothing")
    p = add("history", "list past and current runs, newest first")
    p.add_argument("--workflow", metavar="ID")
    p.add_argument("--status", choices=RUN_STATUSES)
    p.add_argument("--limit", type=int, default=20, metavar="N")
    p.add_argument("--since", metavar="TIME", help="an age (30m, 2h, 7d), epoch seconds or ISO 8601")
    p.add_argument("--cursor", metavar="CURSOR", help="continue a previous listing")
    p = add("show", "show one run with its steps as a timeline")
    p.add_argument("run_id", metavar="RUN_ID")
    add("stats", "per-workflow run statistics")
    p = add("cancel", "cancel a running run")
    p.add_argument("run_id", metavar="RUN_ID")
    p = add("submit", "submit a detection (into the spool, or with --api through the socket)")
    p.add_argument("--clamav", action="store_true",
                   help="take file and threat from CLAM_VIRUSEVENT_FILENAME / CLAM_VIRUSEVENT_VIRUSNAME")
    p.add_argument("--type", dest="type_", metavar="TYPE", help="detection type, e.g. malware (required)")
    p.add_argument("--severity", metavar="LEVEL", help="e.g. critical, high, medium, low")
    p.add_argument("--file", dest="file_path", metavar="PATH", help="the file concerned")
    p.add_argument("--threat", dest="threat_name", metavar="NAME", help="the threat's name")
    p.add_argument("--id", dest="detection_id", metavar="ID", help="unique id (deduplication key)")
    p.add_argument("--scanner", metavar="NAME")
    p.add_argument("--pid", type=int, metavar="PID", help="process concerned (its start time is recorded)")
    p.add_argument("--field", dest="fields", action="append", default=[], metavar="KEY=VALUE",
                   help="any other field (VALUE parsed as JSON when valid); repeatable")
    p.add_argument("--api", action="store_true", help="submit through the socket instead of the spool")
    p.add_argument("--spool", metavar="DIR", help="spool directory (default: $SDD_SPOOL, the config's, "
                                                  "/var/spool/sdd)")
    p.add_argument("--config", metavar="FILE", help="config file to read paths.spool from")
    q = add("quarantine", "list or restore quarantined files")
    qsub = q.add_subparsers(dest="quarantine_command", metavar="ACTION", parser_class=_Parser)
    qsub.required = True
    p = qsub.add_parser("list", help="list the vault", parents=[common])
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.add_argument("--all", action="store_true", help="include restored entries")
    p = qsub.add_parser("restore", help="put a quarantined file back", parents=[common])
    p.add_argument("quarantine_id", metavar="ID")
    p.add_argument("--on-conflict", choices=("fail", "rename", "overwrite"), default="fail",
                   help="when something exists at the original path (default: fail)")
    p.add_argument("--force", action="store_true",
                   help="restore even into a directory re-created or re-owned since the quarantine (root only)")
    add("reload", "re-read the workflows (like systemctl reload)")
    p = add("watch", "follow live events until Ctrl-C")
    p.add_argument("--event", dest="events", action="append", metavar="NAME",
                   help="only this event (repeatable), e.g. run.finished")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    as_json = getattr(args, "json", False)
    try:
        return commands.run(args, sys.stdout)
    except KeyboardInterrupt:
        return 130
    except DaemonUnreachable as exc:
        return _fail(exc, as_json, "unreachable")
    except ApiError as exc:
        return _fail(exc, as_json, exc.code, exc.message)
    except ClientError as exc:
        return _fail(exc, as_json, "error")
    except BrokenPipeError:
        return 1


def _fail(exc: ClientError, as_json: bool, code: str, message: str | None = None) -> int:
    text = message if message is not None else str(exc)
    if as_json:
        json.dump({"error": {"code": code, "message": text}}, sys.stdout)
        sys.stdout.write("\n")
    print(f"sddctl: {exc}", file=sys.stderr)
    return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
