"""What a peer or a script answered, as a step's result: JSON from outside, parsed only when it is safe to keep.

A webhook's response body and a script's stdout are written by someone else. Parsed with `json.loads`, a body
of `[[[[…` raised RecursionError after the call had been delivered or the script had run, so the record said
the step failed (and a retry would do it again); nested a few hundred levels, it parsed, was recorded, and
then no `sddctl show` of the run could be read (its reply nests past the client's bound). So an answer is
parsed as a detection file is: strict JSON (no NaN or Infinity), nested at most `MAX_NESTING` levels; what
is not is not parsed, and the caller keeps it as text.
"""

from __future__ import annotations

from typing import Any

from sdd_client.detection import MAX_NESTING, parse_json, too_deep


def parse_reply(data: bytes | str) -> tuple[Any, str | None]:
    """(the parsed value, None), or (None, why it is kept as text)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = parse_json(text)
    except ValueError as exc:
        return None, str(exc)
    if text.count("[") + text.count("{") > MAX_NESTING and too_deep(value, MAX_NESTING):
        return None, f"JSON nested deeper than {MAX_NESTING} levels"
    return value, None


__all__ = ["MAX_NESTING", "parse_reply"]
