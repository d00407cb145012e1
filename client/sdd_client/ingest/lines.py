"""Reading a producer's stream line by line, in batches of what has arrived, never holding more than a line.

`batches()` yields, for each read(2) that returned data, the complete lines it finished as
`(line_number, bytes)`; a line longer than `max_line` is not kept — its bytes are skipped up to its newline
and it comes out as `(line_number, None)`, so a 10 MB line costs no memory and the stream goes on. One
read returns whatever the producer has written so far (up to `chunk` bytes): a slow producer gives batches
of one line, written at once; a burst gives big batches, written with one durability barrier.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

CHUNK = 1024 * 1024
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux); the fcntl module has it only from Python 3.10 on some builds


class LineReader:
    def __init__(self, fd: int, max_line: int, chunk: int = CHUNK) -> None:
        self.fd = fd
        self.max_line = max_line
        self.chunk = chunk
        self.line_number = 0
        self.eof = False

    def grow_pipe(self) -> None:
        """Lets a pipe hold up to 1 MiB, so a producer can write ahead while a batch is being written."""
        try:
            import fcntl

            fcntl.fcntl(self.fd, F_SETPIPE_SZ, self.chunk)
        except (OSError, ValueError, ImportError):
            pass  # not a pipe, or above /proc/sys/fs/pipe-max-size: the default size works too

    def batches(self) -> Iterator[list[tuple[int, bytes | None]]]:
        partial = b""
        skipping = False  # inside a line that is already too long: drop bytes until its newline
        while True:
            data = os.read(self.fd, self.chunk)
            if not data:
                break
            batch: list[tuple[int, bytes | None]] = []
            start = 0
            while True:
                end = data.find(b"\n", start)
                if end < 0:
                    break
                self.line_number += 1
                if skipping:
                    batch.append((self.line_number, None))
                    skipping = False
                else:
                    line = partial + data[start:end] if partial else data[start:end]
                    partial = b""
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    batch.append((self.line_number, line if len(line) <= self.max_line else None))
                start = end + 1
            rest = data[start:]
            if rest and not skipping:
                if len(partial) + len(rest) > self.max_line:
                    partial, skipping = b"", True
                else:
                    partial = partial + rest if partial else rest
            if batch:
                yield batch
        self.eof = True
        if partial or skipping:  # a last line without its newline (a producer that died mid-line, or EOF)
            self.line_number += 1
            yield [(self.line_number, None if skipping else partial)]


__all__ = ["CHUNK", "LineReader"]
