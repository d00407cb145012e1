"""`sddctl validate-detection FILE...`: checks spool files against the published detection schema, offline.

Exit 0 when every file is one the daemon accepts, 1 otherwise; each error names the field. Wrong types of
the well-known fields (`process_id` as a string, a relative `file_path`...) do not keep a file out of the
daemon, which passes every field on as is; they are shown as warnings, and `--strict` makes them errors (for
a producer's own tests). `-` reads standard input.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import detection
from .cli_context import Ctx
from .output import safe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", metavar="FILE", nargs="+", help="a detection file, or - for standard input")
    parser.add_argument("--strict", action="store_true",
                        help="also require the types the shipped workflows expect of well-known fields")
    parser.add_argument("--max-size", type=int, default=detection.MAX_FILE_SIZE, metavar="BYTES",
                        help="the daemon's [intake] max_file_size (default 1 MiB)")


def _read(name: str, limit: int) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read(limit + 1)
    with open(name, "rb") as fh:
        return fh.read(limit + 1)


def validate_file(name: str, *, strict: bool, max_size: int) -> dict[str, Any]:
    try:
        raw = _read(name, max_size)
    except OSError as exc:
        return {"file": name, "valid": False, "errors": [f"cannot read: {exc.strerror or exc}"], "warnings": []}
    value, errors = detection.check(raw, max_size=max_size)
    warnings: list[str] = []
    if not errors:
        typed = [e for e in detection.problems(value, strict=True) if e not in errors]
        if strict:
            errors = typed
        else:
            warnings = typed
    return {"file": name, "valid": not errors, "errors": errors, "warnings": warnings}


def cmd_validate_detection(ctx: Ctx) -> int:
    a = ctx.args
    results = [validate_file(name, strict=a.strict, max_size=a.max_size) for name in a.files]
    ok = all(r["valid"] for r in results)
    if ctx.as_json:
        ctx.emit_json({"valid": ok, "strict": a.strict, "files": results})
        return 0 if ok else 1
    for r in results:
        name = safe(r["file"], 200)
        if r["valid"]:
            ctx.print(f"{name}: {ctx.style.paint('ok', 'green')}"
                      + (f" ({len(r['warnings'])} warning{'s' if len(r['warnings']) != 1 else ''})"
                         if r["warnings"] else ""))
        ctx.print(*(f"{name}: {ctx.style.paint('error', 'red')}: {safe(e, 400)}" for e in r["errors"]))
        ctx.print(*(f"{name}: {ctx.style.paint('warning', 'yellow')}: {safe(w, 400)}" for w in r["warnings"]))
    return 0 if ok else 1


__all__ = ["add_arguments", "cmd_validate_detection", "validate_file"]
