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
from .events import EVENT_NAMES
from .run_commands import since_value

RUN_STATUSES = ("pending", "running", "completed", "failed", "rolled_back", "cancelled", "interrupted")
ON_CONFLICT = ("fail", "rename", "overwrite")  # restore_file's on_conflict values (the API's too)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        if "--json" in sys.argv[1:]:  # the promised single JSON document, even for a usage error
            json.dump({"error": {"code": "usage", "message": message}}, sys.stdout)
            sys.stdout.write("\n")
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _page_size(text: str) -> int:
    """`--limit`: what the daemon accepts for a page (1 to 1000), checked before anything is sent."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1000, got {value}")
    return value


def _since(text: str) -> float | str:
    try:
        return since_value(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # SUPPRESS: a value given before the command is not reset by the subcommand's default.
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output: one JSON document on stdout")
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                        help="the daemon's socket (default: $SDD_SOCKET, /run/sdd/sdd.sock, the user socket, "
                             "then run/sdd.sock of the checkout this sddctl comes from)")
    common.add_argument("--timeout", type=float, metavar="SECONDS", default=argparse.SUPPRESS,
                        help="how long to wait for each reply (default 60)")

    parser = _Parser(prog="sddctl", description="Control the sdd response daemon.", parents=[common])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, help_: str, **kw: object) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, parents=[common], **kw)  # type: ignore[arg-type]

    add("status", "show the daemon's state")
    add("workflows", "list the loaded workflows")
    p = add("show-workflow", "show one workflow and its steps")
    p.add_argument("workflow_id", metavar="ID", help="the workflow's workflow_id")
    p = add("validate", "check workflow files with the daemon's validator")
    p.add_argument("files", metavar="FILE", nargs="+", help="a workflow file (YAML)")
    validate_detection.add_arguments(add("validate-detection", "check detection files against the spool schema"))
    p = add("run", "start a workflow (or, with --dry-run, show what it would do)")
    p.add_argument("workflow_id", metavar="ID", help="the workflow's workflow_id")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="context value (VALUE is parsed as JSON when it is valid JSON); repeatable")
    p.add_argument("--detection", metavar="FILE.json",
                   help="run as if this detection (a spool file's JSON object) had arrived")
    p.add_argument("--wait", action="store_true", help="show each step as it finishes, then the outcome")
    p.add_argument("--dry-run", action="store_true",
                   help="plan only: show what each step would do; nothing is run or recorded")
    p = add("history", "list past and current runs, newest first")
    p.add_argument("--workflow", metavar="ID", help="only runs of this workflow")
    p.add_argument("--status", choices=RUN_STATUSES, help="only runs in this status: " + ", ".join(RUN_STATUSES))
    p.add_argument("--detection", metavar="ID",
                   help="only the runs of this detection (sdd's detection id or the producer's id)")
    p.add_argument("--limit", type=_page_size, default=20, metavar="N", help="at most N runs (1-1000, default 20)")
    p.add_argument("--since", type=_since, metavar="TIME",
                   help="only runs started since TIME: an age (90s, 2m, 30min, 2h, 7d, 1w), epoch seconds, "
                        "or an ISO 8601 time (2026-11-25T10:00:00Z)")
    p.add_argument("--cursor", metavar="CURSOR", help="continue a previous listing where it stopped")
    p = add("show", "show one run with its steps as a timeline, or one detection with its runs")
    p.add_argument("run_id", metavar="ID",
                   help="a run id or a unique prefix of one (at least 4 characters), or a detection "
                        "(sdd's detection id or the producer's id)")
    p.add_argument("--detection", action="store_true", help="ID names a detection, not a run")
    add("stats", "per-workflow run statistics")
    p = add("cancel", "cancel a running run")
    p.add_argument("run_id", metavar="RUN_ID", help="a run id or a unique prefix of one (at least 4 characters)")
    p = add("submit", "submit a detection (into the spool, or with --api through the socket)")
    p.add_argument("--clamav", action="store_true",
                   help="take file and threat from CLAM_VIRUSEVENT_FILENAME / CLAM_VIRUSEVENT_VIRUSNAME")
    p.add_argument("--type", dest="type_", metavar="TYPE", help="detection type, e.g. malware (required)")
    p.add_argument("--severity", metavar="LEVEL", help="e.g. critical, high, medium, low")
    p.add_argument("--file", dest="file_path", metavar="PATH",
                   help="the file concerned (a relative path is made absolute)")
    p.add_argument("--threat", dest="threat_name", metavar="NAME", help="the threat's name")
    p.add_argument("--id", dest="detection_id", metavar="ID",
                   help="the detection's unique id (deduplication key); one is made up when none is given")
    p.add_argument("--scanner", metavar="NAME", help="what found it, e.g. clamav")
    p.add_argument("--pid", type=int, metavar="PID", help="process concerned (its start time is recorded)")
    p.add_argument("--field", dest="fields", action="append", default=[], metavar="KEY=VALUE",
                   help="any other field (VALUE parsed as JSON when valid); repeatable")
    p.add_argument("--api", action="store_true", help="submit through the socket instead of the spool")
    p.add_argument("--wait", action="store_true",
                   help="follow the detection to the outcome of its runs (exit 0 when all completed)")
    p.add_argument("--spool", metavar="DIR", help="spool directory (default: $SDD_SPOOL, the config's, "
                                                  "/var/spool/sdd)")
    p.add_argument("--config", metavar="FILE", help="config file to read paths.spool from")
    q = add("quarantine", "list or restore quarantined files")
    qsub = q.add_subparsers(dest="quarantine_command", metavar="ACTION", parser_class=_Parser)
    qsub.required = True
    p = qsub.add_parser("list", help="list the vault", description="list the vault", parents=[common])
    p.add_argument("--limit", type=_page_size, default=50, metavar="N", help="at most N entries (1-1000, default 50)")
    p.add_argument("--all", action="store_true", help="include restored entries")
    p = qsub.add_parser("restore", help="put a quarantined file back", description="put a quarantined file back",
                        parents=[common])
    p.add_argument("quarantine_id", metavar="ID", help="the quarantine id (from quarantine list)")
    p.add_argument("--on-conflict", choices=ON_CONFLICT, default="fail",
                   help="when something exists at the original path: fail (the default), rename (restore "
                        "beside it as NAME.restored-ID), or overwrite (replace it)")
    p.add_argument("--force", action="store_true",
                   help="restore even into a directory re-created or re-owned since the quarantine (root only)")
    add("reload", "re-read the workflows (like systemctl reload)")
    p = add("watch", "follow live events until Ctrl-C")
    p.add_argument("--event", dest="events", action="append", metavar="NAME", choices=EVENT_NAMES,
                   help="only this event (repeatable): " + ", ".join(EVENT_NAMES))
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
