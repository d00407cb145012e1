"""What every sddctl command gets: the parsed arguments, the output stream, the style, a client factory."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, TextIO

from . import spool
from .client import Client
from .output import Style

TERMINAL = {"completed", "failed", "rolled_back", "cancelled", "interrupted"}


@dataclass
class Ctx:
    args: argparse.Namespace
    out: TextIO
    style: Style
    as_json: bool

    def client(self) -> Client:
        return Client(getattr(self.args, "socket", None), timeout=getattr(self.args, "timeout", 60.0))

    def call(self, method: str, **params: Any) -> Any:
        with self.client() as c:
            return c.call_params(method, params)

    def print(self, *lines: str) -> None:
        for line in lines:
            self.out.write(line + "\n")
        self.out.flush()

    def emit_json(self, value: Any) -> None:
        json.dump(value, self.out, indent=2, sort_keys=True, default=str)
        self.out.write("\n")
        self.out.flush()


def kv_value(text: str, option: str) -> tuple[str, Any]:
    """`KEY=VALUE` from --set/--field: VALUE as JSON when it parses (numbers, true, lists...), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise spool.UsageError(f"{option} {text!r}: expected KEY=VALUE")
    try:
        parsed: Any = spool.parse_json(value, f"{option} {key}")
    except spool.UsageError:
        # Not JSON: the text itself, unless it only failed for holding NaN or an out-of-range number.
        try:
            json.loads(value)
        except ValueError:
            return key, value
        raise
    return key, parsed


__all__ = ["TERMINAL", "Ctx", "kv_value"]
