"""`sdd-ingest --format falco|wazuh|yara|jsonl [--spool DIR] [--config FILE]`: producers' events on standard
input, one detection per event into sdd's spool.

Streams (`falco`, `jsonl`, `yara`) are read line by line until EOF, so Falco's `program_output` with
`keep_alive: true` runs one process for the whole stream. What one read(2) returns is mapped and written
at once, with one durability barrier for the batch (spoolfile.py), so the producer waits at most for one
spool write. A malformed or oversized line is reported on standard error with its number and skipped; at
EOF a one-line summary follows, and the exit status is 0, or 1 when input came but nothing could be written
(2: usage). SIGTERM and SIGINT end the stream after the batch in hand is written. `--format wazuh` is an
active-response executable instead: one message, the `check_keys` handshake (wazuh.py).

Lean on purpose (started once per Wazuh alert; the budget is 50 ms): no asyncio, no client library, only
the format's own adapter is imported, and the schema is read once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .. import detection, spoolfile
from ..errors import ClientError
from .lines import LineReader
from .outcome import Detection, Ignored, Rejected, where

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any, Protocol, TextIO

    from .outcome import Outcome

    class Adapter(Protocol):
        name: str

        def feed(self, lineno: int, line: bytes) -> Iterable[Outcome]: ...

        def end(self) -> Iterable[Outcome]: ...

FORMATS = ("falco", "wazuh", "yara", "jsonl")
MAX_LINE = spoolfile.MAX_DETECTION  # a longer event cannot fit in a spool file


class _Stop(Exception):
    """SIGTERM/SIGINT while waiting for input."""


class Ingest:
    """Counts and reports what happens to the input; writes detections in batches."""

    def __init__(self, writer: spoolfile.SpoolWriter, fmt: str, err: TextIO) -> None:
        self.writer = writer
        self.fmt = fmt
        self.err = err
        self.lines = 0
        self.written = 0
        self.rejected = 0
        self.failed = 0
        self.ignored = 0

    def report(self, lines: tuple[int, ...], message: str) -> None:
        self.err.write(f"sdd-ingest: {self.fmt}: {where(lines)}: {message}\n")

    def handle(self, outcomes: Iterable[Outcome]) -> None:
        pending: list[tuple[Detection, bytes]] = []
        for outcome in outcomes:
            if isinstance(outcome, Detection):
                for warning in outcome.warnings:
                    self.report(outcome.lines, f"warning: {warning}")
                try:  # refuses lone surrogates that are no file-name bytes, and anything over 1 MiB
                    data = outcome.encode()
                except ClientError as exc:
                    self.rejected += 1
                    self.report(outcome.lines, str(exc))
                    continue
                # The rest of what the daemon checks; the nesting walk only when the text could nest that deep.
                deep = data.count(b"[") + data.count(b"{") > detection.MAX_NESTING
                problems = detection.problems(outcome.detection, deep=deep, surrogates=False)
                if problems:
                    self.rejected += 1
                    self.report(outcome.lines, "; ".join(problems))
                    continue
                pending.append((outcome, data))
            elif isinstance(outcome, Rejected):
                self.rejected += 1
                self.report(outcome.lines, outcome.reason)
            elif isinstance(outcome, Ignored):
                self.ignored += 1
        for start in range(0, len(pending), spoolfile.MAX_BATCH):
            chunk = pending[start:start + spoolfile.MAX_BATCH]
            results = self.writer.write_batch([data for _, data in chunk])
            for (outcome, _), result in zip(chunk, results):
                if isinstance(result, str):
                    self.written += 1
                else:
                    self.failed += 1
                    self.report(outcome.lines, f"not written: {result}")
        self.err.flush()

    def summary(self) -> str:
        parts = [f"{self.written} detection{'s' if self.written != 1 else ''} written"]
        for count, what in ((self.rejected, "rejected"), (self.failed, "failed to write"),
                            (self.ignored, "not detections")):
            if count:
                parts.append(f"{count} {what}")
        return f"sdd-ingest: {self.fmt}: {self.lines} line{'s' if self.lines != 1 else ''}: {', '.join(parts)}"

    @property
    def exit_code(self) -> int:
        return 1 if self.written == 0 and (self.rejected or self.failed) else 0


def adapter_for(fmt: str) -> Adapter:
    if fmt == "falco":
        from .falco import FalcoAdapter

        return FalcoAdapter()
    if fmt == "yara":
        from .yara import YaraAdapter

        return YaraAdapter()
    from .jsonl import JsonlAdapter

    return JsonlAdapter()


def run_stream(ingest: Ingest, adapter: Adapter, reader: LineReader) -> None:
    state = {"reading": False, "stop": False}

    def on_signal(signum: int, frame: Any) -> None:
        state["stop"] = True
        if state["reading"]:
            raise _Stop  # interrupts the blocking read; a batch being written is finished first

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    reader.grow_pipe()
    batches = reader.batches()
    try:
        while not state["stop"]:
            state["reading"] = True
            try:
                batch = next(batches, None)
            finally:
                state["reading"] = False
            if batch is None:
                break
            outcomes: list[Outcome] = []
            for lineno, line in batch:
                if line is None:
                    outcomes.append(Rejected((lineno,), f"longer than {reader.max_line} bytes: skipped"))
                else:
                    outcomes.extend(adapter.feed(lineno, line))
            ingest.lines = reader.line_number
            ingest.handle(outcomes)
    except _Stop:
        pass
    ingest.lines = reader.line_number
    ingest.handle(adapter.end())


def run_wazuh(ingest: Ingest, reader: LineReader, program: str) -> None:
    from .wazuh import converse

    outcome, note = converse(reader, sys.stdout.fileno(), program)
    ingest.lines = reader.line_number
    if note:
        ingest.report(outcome.lines, note)
    if isinstance(outcome, Ignored):
        ingest.report(outcome.lines, outcome.reason)
    ingest.handle([outcome])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdd-ingest", description="Read a producer's events on standard input and write one detection "
                                       "per event into sdd's spool.")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="falco: Falco's JSON alerts; wazuh: a Wazuh active-response message; yara: yara's "
                             "or YARA-X's (ndjson) matches; jsonl: one detection object per line")
    parser.add_argument("--spool", metavar="DIR",
                        help="spool directory (default: $SDD_SPOOL, the config's paths.spool, /var/spool/sdd)")
    parser.add_argument("--config", metavar="FILE", help="config file to read paths.spool from")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    err = sys.stderr
    try:
        spool = spoolfile.resolve_spool(args.spool, args.config)
        writer = spoolfile.SpoolWriter(spool)
    except spoolfile.ClientError as exc:
        err.write(f"sdd-ingest: {exc}\n")
        return exc.exit_code
    ingest = Ingest(writer, args.format, err)
    reader = LineReader(sys.stdin.fileno(), MAX_LINE)
    with writer:
        if args.format == "wazuh":
            run_wazuh(ingest, reader, os.path.basename(sys.argv[0]) or "sdd-ingest")
        else:
            run_stream(ingest, adapter_for(args.format), reader)
    err.write(ingest.summary() + "\n")
    return ingest.exit_code


if __name__ == "__main__":
    sys.exit(main())
