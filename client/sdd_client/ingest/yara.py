"""`--format yara`: the matches of a YARA scan, from the `yara` command line or from YARA-X (`yr scan
--output-format ndjson`), one detection per matched file.

`yara` (cli/yara.c) prints one line per matching rule and file: `[NAMESPACE:]RULE [TAGS] [META] PATH` —
namespace with `-e`, `[tag1,tag2]` with `-g`, `[key="value",n=1]` with `-m` — then, with `-s`/`-L`, one
`0xOFFSET:[LENGTH:]$string[: data]` line per string match. PATH is printed raw, as given on the command line
(so scan absolute paths), which makes a name with a newline look like two lines. A line is therefore read
as the continuation of the previous path when that longer name exists on disk (or begins a name that does);
if the shorter name exists too the output is ambiguous, and the longer name wins with a warning, so a file
named `x\\nRule /etc/passwd` cannot make up a match. YARA-X's ndjson has one JSON object per scanned file:
`{"path": ..., "rules": [{"identifier", "namespace"?, "meta"?, "tags"?, "strings"?}]}` (`rules` is empty
for a file without matches), so names are unambiguous there.

The lines for one file make one detection, even when they are not consecutive: `yara` scans with several
threads (32 by default) and prints each rule match, with its string lines, under a lock, so another file's
lines can fall between two rules of the same file. A matched file is therefore kept open until `WINDOW`
other files have matched after it, a line that is not a match comes, or the output ends (yara block-buffers
its output to a pipe, so a match arrives about that late anyway). Each detection has `type` `yara`,
`severity` `high` (or the first matching rule's `severity` meta when it is critical/high/medium/low),
`threat_name` the first rule, `file_path`, `scanner` `yara` or `yara-x`, `source` `yara`, and everything the
output said under `yara`. No `id`: the next scan of the same file is a new observation, not a replay.
"""

from __future__ import annotations

import os
import re

from .outcome import BadLine, Detection, Ignored, Rejected, absolute_path, clean_text, parse_json_line

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from .outcome import Outcome

_MATCH = re.compile(
    rb"(?:(?P<ns>[^\s:\[\]]+):)?(?P<rule>[A-Za-z_][A-Za-z0-9_]*) "
    rb"(?:\[(?P<tags>[A-Za-z0-9_,]*)\] )?"
    rb"(?:\[(?P<meta>(?:[^\]\"]|\"(?:[^\"\\]|\\.)*\")*)\] )?"
    rb"(?P<path>/.*)", re.DOTALL)
_STRING = re.compile(rb"0x[0-9a-fA-F]+:(?:[0-9]+:)?\$[A-Za-z0-9_]*(?:: .*)?", re.DOTALL)
_META_ITEM = re.compile(r'([A-Za-z_][A-Za-z0-9_]*) ?=(?:"((?:[^"\\]|\\.)*)"|(-?[0-9]+)|(true|false))')
SEVERITIES = ("critical", "high", "medium", "low")
MAX_STRINGS = 100  # string-match lines kept per detection
WINDOW = 64  # matched files kept open for more of their rules: twice yara's most threads (YR_MAX_THREADS)


class _Match:
    """One matched file being assembled from its `yara` lines."""

    __slots__ = ("lines", "path", "rules", "strings", "warnings")

    def __init__(self, lineno: int, path: bytes, rule: dict[str, Any]) -> None:
        self.lines = [lineno]
        self.path = path
        self.rules = [rule]
        self.strings: list[str] = []
        self.warnings: list[str] = []


def _lexists(path: bytes) -> bool:
    try:
        os.lstat(path)
        return True
    except (OSError, ValueError):
        return False


def _begins_a_name(prefix: bytes) -> bool:
    """Some existing path starts with `prefix` + newline (a name with several newlines, read so far)."""
    directory, _, base = prefix.rpartition(b"/")
    try:
        names = os.listdir(directory or b"/")
    except (OSError, ValueError):
        return False
    return any(name.startswith(base + b"\n") for name in names)


def _meta(text: str) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for m in _META_ITEM.finditer(text):
        key, string, number, flag = m.groups()
        meta[key] = string if string is not None else int(number) if number is not None else flag == "true"
    return meta


class YaraAdapter:
    name = "yara"

    def __init__(self) -> None:
        self.pending: _Match | None = None  # the last match line: newline continuations and strings go to it
        self.open: dict[bytes, _Match] = {}  # finished matches, by path, oldest first, waiting for more rules

    def feed(self, lineno: int, line: bytes) -> Iterable[Outcome]:
        if line.startswith(b"{"):
            return [*self._flush(), self._ndjson(lineno, line)]
        pending = self.pending
        if pending is not None:
            joined = pending.path + b"\n" + line
            if _lexists(joined) or _begins_a_name(joined):
                if _lexists(pending.path) or _MATCH.fullmatch(line):
                    pending.warnings.append(
                        "ambiguous output (a file name with a newline): read as one name; scan with YARA-X "
                        "--output-format ndjson to be sure no other match is hidden here")
                pending.path = joined
                pending.lines.append(lineno)
                return ()
            if _STRING.fullmatch(line):
                if len(pending.strings) < MAX_STRINGS:
                    pending.strings.append(line.decode("utf-8", "backslashreplace"))
                pending.lines.append(lineno)
                return ()
        m = _MATCH.fullmatch(line)
        if m is None:
            reason = ("not a yara match line ([NAMESPACE:]RULE [TAGS] [META] /ABSOLUTE/PATH)"
                      if line.strip() else "blank line")
            return [*self._flush(), Rejected((lineno,), reason)]
        rule: dict[str, Any] = {"identifier": m.group("rule").decode("ascii")}
        if m.group("ns") is not None:
            rule["namespace"] = m.group("ns").decode("utf-8", "backslashreplace")
        if m.group("tags") is not None:
            rule["tags"] = [t for t in m.group("tags").decode("ascii").split(",") if t]
        if m.group("meta") is not None:
            rule["meta"] = _meta(m.group("meta").decode("utf-8", "backslashreplace"))
        out = self._close_pending()
        self.pending = _Match(lineno, m.group("path"), rule)
        return out

    def end(self) -> Iterable[Outcome]:
        return self._flush()

    def _close_pending(self) -> list[Outcome]:
        """The last match line is complete (its path can grow no more): joins it to an open match of the
        same file, or opens one — and emits the oldest open match once WINDOW files are open."""
        pending, self.pending = self.pending, None
        if pending is None:
            return []
        same = self.open.pop(pending.path, None)
        if same is not None:
            same.rules.extend(pending.rules)
            same.lines.extend(pending.lines)
            same.strings.extend(pending.strings[:MAX_STRINGS - len(same.strings)])
            same.warnings.extend(w for w in pending.warnings if w not in same.warnings)
            pending = same
        self.open[pending.path] = pending  # re-inserted: the newest
        if len(self.open) <= WINDOW:
            return []
        oldest = next(iter(self.open))
        return [self._emit(self.open.pop(oldest))]

    def _flush(self) -> list[Outcome]:
        out = self._close_pending()
        matches, self.open = sorted(self.open.values(), key=lambda match: match.lines[0]), {}
        return [*out, *(self._emit(match) for match in matches)]

    def _emit(self, match: _Match) -> Outcome:
        lines = tuple(sorted(match.lines))
        path = absolute_path(os.fsdecode(match.path))
        if path is None:
            return Rejected(lines, "the matched path is not usable (NUL or longer than 4096 characters)")
        original: dict[str, Any] = {"path": path, "rules": match.rules}
        if match.strings:
            original["strings"] = match.strings
        return self._detection(lines, path, match.rules, "yara", original, match.warnings)

    def _ndjson(self, lineno: int, line: bytes) -> Outcome:
        try:
            value = parse_json_line(line)
        except BadLine as exc:
            return Rejected((lineno,), str(exc))
        if not isinstance(value, dict) or not isinstance(value.get("path"), str):
            return Rejected((lineno,), "not a YARA-X ndjson line: expected an object with a string 'path'")
        if "count" in value and "rules" not in value:
            return Rejected((lineno,), "a --count line names no rule: scan without -c/--count")
        rules = value.get("rules")
        if not isinstance(rules, list) or not all(
                isinstance(r, dict) and clean_text(r.get("identifier"), 256) for r in rules):
            return Rejected((lineno,), "'rules' is not a list of objects with an 'identifier'")
        if not rules:
            return Ignored((lineno,), "no rule matched")
        path = absolute_path(value["path"])
        if path is None:
            return Rejected((lineno,), "'path' is not an absolute path: scan an absolute path")
        return self._detection((lineno,), path, rules, "yara-x", value, [])

    @staticmethod
    def _detection(lines: tuple[int, ...], path: str, rules: list[dict[str, Any]], scanner: str,
                   original: dict[str, Any], warnings: list[str]) -> Outcome:
        severity = "high"
        meta = rules[0].get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("severity"), str) and \
                meta["severity"].lower() in SEVERITIES:
            severity = meta["severity"].lower()
        if not _lexists(os.fsencode(path)):
            warnings = [*warnings, "the matched file does not exist (any more)"]
        detection = {"type": "yara", "source": "yara", "scanner": scanner, "severity": severity,
                     "threat_name": rules[0]["identifier"], "file_path": path, "yara": original}
        return Detection(lines, detection, warnings)


__all__ = ["YaraAdapter"]
