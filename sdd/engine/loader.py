"""Reading workflow YAML: one file (`load_workflow`), a text (`validate_text`, `load_text`) or the
configured directories (`load_workflow_dirs`: later dirs override the same workflow_id; sub-workflow
references and cycles checked across the set; optionally refusing files that anyone but root could write).

YAML is composed with SafeLoader into a node tree first, so every issue can name its file:line:column;
documents whose aliases expand beyond a bound are refused before anything walks them.
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .compilation import precompile
from .errors import ValidationIssue, WorkflowValidationError
from .issues import Marks, format_path
from .model import Workflow, build_workflow
from .semantic_check import find_cycles
from .validation import collect_issues

MAX_FILE_SIZE = 1 << 20
MAX_NODES = 100_000
YAML_SUFFIXES = (".yaml", ".yml")


def _action_names(actions: Any) -> Collection[str] | None:
    if actions is None:
        return None
    registry = getattr(actions, "registry", None)      # a WorkflowEngine
    if registry is not None:
        actions = registry
    names = getattr(actions, "names", None)            # an ActionRegistry
    if callable(names):
        return names()
    if isinstance(actions, Mapping):
        return frozenset(actions)
    return frozenset(getattr(a, "name", a) for a in actions)


def _expanded_size(node: yaml.Node) -> int:
    memo: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        memo[key] = 1  # guards recursive aliases
        total = 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k) + size(v)
        elif isinstance(n, yaml.SequenceNode):
            for v in n.value:
                total += size(v)
        memo[key] = total
        return total
    return size(node)


def _marks(node: yaml.Node, source: str) -> tuple[Marks, list[ValidationIssue]]:
    values: dict[tuple[Any, ...], tuple[int, int]] = {}
    keys: dict[tuple[Any, ...], tuple[int, int]] = {}
    issues: list[ValidationIssue] = []
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[Any, ...]]] = [(node, ())]
    while stack:
        n, path = stack.pop()
        values.setdefault(path, (n.start_mark.line + 1, n.start_mark.column + 1))
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            first: dict[Any, int] = {}
            for k, v in n.value:
                if not isinstance(k, yaml.ScalarNode) or k.value == "<<":
                    continue
                key = k.value
                if key in first:
                    issues.append(ValidationIssue(source, k.start_mark.line + 1, k.start_mark.column + 1,
                                                  format_path(path + (key,)),
                                                  f"duplicate key {key!r} (first given on line {first[key]})"))
                    continue
                first[key] = k.start_mark.line + 1
                keys[path + (key,)] = (k.start_mark.line + 1, k.start_mark.column + 1)
                stack.append((v, path + (key,)))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                stack.append((v, path + (i,)))
    return Marks(values, keys), issues


class _Composer(yaml.SafeLoader):
    """SafeLoader that notices an alias used inside the value it names (`a: &x [*x]`): such a document is a
    value that contains itself, which nothing downstream (schema, semantic checks, the runner) can walk."""

    def __init__(self, text: str):
        super().__init__(text)
        self._open: list[tuple[str, yaml.Mark]] = []            # anchors whose value is being composed
        self.recursive: tuple[str, yaml.Mark, yaml.Mark] | None = None   # (anchor, alias mark, anchor mark)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if self.recursive is None:
                for anchor, mark in self._open:
                    if anchor == event.anchor:
                        self.recursive = (anchor, event.start_mark, mark)
                        break
            return super().compose_node(parent, index)
        anchor = getattr(event, "anchor", None)
        if anchor is None:
            return super().compose_node(parent, index)
        self._open.append((anchor, event.start_mark))
        try:
            return super().compose_node(parent, index)
        finally:
            self._open.pop()


def parse_yaml(text: str, source: str) -> tuple[Any, Marks, list[ValidationIssue]]:
    """(data, marks, issues) of one YAML document, never raising for bad input."""
    loader = _Composer(text)
    try:
        node = loader.get_single_node()
        if loader.recursive is not None:
            anchor, at, defined = loader.recursive
            return None, Marks(), [ValidationIssue(
                source, at.line + 1, at.column + 1, "",
                f"the alias *{anchor} is used inside the value it names (anchored &{anchor} on line "
                f"{defined.line + 1}): a value may not contain itself")]
        if node is None:
            return None, Marks(), [ValidationIssue(source, 1, 1, "", "empty workflow file")]
        if _expanded_size(node) > MAX_NODES:
            return None, Marks(), [ValidationIssue(source, 1, 1, "",
                                                   f"the document is too large (more than {MAX_NODES} "
                                                   "values once aliases are expanded)")]
        marks, issues = _marks(node, source)
        data = loader.construct_document(node)
        return data, marks, issues
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        what = " ".join(x for x in (exc.context, exc.problem) if x)
        return None, Marks(), [ValidationIssue(source, line, col, "", f"YAML syntax error: {what}")]
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        return None, Marks(), [ValidationIssue(source, None, None, "", f"YAML error: {exc}")]
    finally:
        loader.dispose()


def _check_text(text: str, source: str, actions: Collection[str] | None
                ) -> tuple[Any, Marks, list[ValidationIssue], list[tuple[str, tuple[Any, ...]]]]:
    data, marks, issues = parse_yaml(text, source)
    if data is None and issues:
        return data, marks, issues, []
    more, subs = collect_issues(data, source, marks, actions)
    issues = sorted(issues + more, key=lambda i: (i.line or 0, i.column or 0))
    return data, marks, issues, subs


def validate_text(yaml_text: str, name: str = "<text>", actions: Any = None) -> list[ValidationIssue]:
    """Every issue of a workflow given as text (empty when valid); for `workflows.validate`."""
    if len(yaml_text) > MAX_FILE_SIZE:
        return [ValidationIssue(name, None, None, "", f"larger than {MAX_FILE_SIZE} bytes")]
    return _check_text(yaml_text, name, _action_names(actions))[2]


def load_text(yaml_text: str, name: str = "<text>", actions: Any = None) -> Workflow:
    """The workflow in `yaml_text`, or WorkflowValidationError with every issue."""
    if len(yaml_text) > MAX_FILE_SIZE:
        raise WorkflowValidationError([ValidationIssue(name, None, None, "", f"larger than {MAX_FILE_SIZE} bytes")])
    data, _, issues, _ = _check_text(yaml_text, name, _action_names(actions))
    if issues:
        raise WorkflowValidationError(issues)
    return precompile(build_workflow(data, source=name))


def _read(path: Path, require_root_owned: bool) -> str:
    """The file's text; raises _Refused with the reason when it may not be used."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if os.path.islink(path):
            raise _Refused("refused: it is a symbolic link") from None
        raise _Refused(f"cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused("refused: not a regular file")
        if require_root_owned:
            reason = _unsafe_owner(st)
            if reason:
                raise _Refused(f"refused: {reason} (a workflow runs as root)")
        if st.st_size > MAX_FILE_SIZE:
            raise _Refused(f"refused: larger than {MAX_FILE_SIZE} bytes")
        data = os.read(fd, MAX_FILE_SIZE + 1)
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Refused(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


class _Refused(Exception):
    pass


def _unsafe_owner(st: os.stat_result) -> str | None:
    if st.st_uid != 0:
        return f"owned by uid {st.st_uid}, not root"
    if st.st_mode & stat.S_IWOTH:
        return f"writable by everyone; mode {stat.S_IMODE(st.st_mode):04o}"
    if st.st_mode & stat.S_IWGRP:
        return f"writable by its group (gid {st.st_gid}); mode {stat.S_IMODE(st.st_mode):04o}"
    return None


def load_workflow(path: str | Path, actions: Any = None) -> Workflow:
    """One workflow file, validated (unknown actions are checked when `actions` is given)."""
    source = str(path)
    try:
        text = _read(Path(path), require_root_owned=False)
    except _Refused as exc:
        raise WorkflowValidationError([ValidationIssue(source, None, None, "", str(exc))]) from None
    data, _, issues, _subs = _check_text(text, source, _action_names(actions))
    if issues:
        raise WorkflowValidationError(issues)
    return precompile(build_workflow(data, source=source))


def load_workflow_dirs(dirs: Iterable[str | Path], actions: Any = None, *, require_root_owned: bool = False
                       ) -> tuple[dict[str, Workflow], list[ValidationIssue]]:
    """Every valid workflow in `dirs` (later dirs override the same workflow_id) and every issue found.

    A workflow whose sub-workflows are unknown or form a cycle is left out and reported. With
    `require_root_owned`, a file or directory that anyone but root could write is refused."""
    names = _action_names(actions)
    found: dict[str, Workflow] = {}
    refs: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}
    marks_of: dict[str, Marks] = {}
    issues: list[ValidationIssue] = []
    for d in dirs:
        directory = Path(d)
        try:
            dst = os.stat(directory)
        except OSError:
            continue  # a configured directory that does not exist holds no workflows
        if not stat.S_ISDIR(dst.st_mode):
            issues.append(ValidationIssue(str(directory), None, None, "", "not a directory"))
            continue
        if require_root_owned:
            reason = _unsafe_owner(dst)
            if reason:
                issues.append(ValidationIssue(str(directory), None, None, "",
                                              f"directory refused: {reason} (its workflows would run as root)"))
                continue
        in_this_dir: dict[str, str] = {}
        for path in sorted(p for p in directory.iterdir() if p.suffix in YAML_SUFFIXES):
            source = str(path)
            try:
                text = _read(path, require_root_owned)
            except _Refused as exc:
                issues.append(ValidationIssue(source, None, None, "", str(exc)))
                continue
            data, marks, file_issues, subs = _check_text(text, source, names)
            if file_issues:
                issues.extend(file_issues)
                continue
            wf = precompile(build_workflow(data, source=source))
            if wf.workflow_id in in_this_dir:
                line, col = marks.at(("workflow_id",))
                issues.append(ValidationIssue(source, line, col, "workflow_id",
                                              f"workflow_id {wf.workflow_id!r} is also defined in "
                                              f"{in_this_dir[wf.workflow_id]}; this file is ignored"))
                continue
            in_this_dir[wf.workflow_id] = source
            found[wf.workflow_id] = wf
            refs[wf.workflow_id] = subs
            marks_of[wf.workflow_id] = marks
    issues.extend(_check_references(found, refs, marks_of))
    return found, issues


def _check_references(found: dict[str, Workflow], refs: dict[str, list[tuple[str, tuple[Any, ...]]]],
                      marks_of: dict[str, Marks]) -> list[ValidationIssue]:
    """Unknown sub-workflows and cycles across the set; offending workflows are removed from `found`."""
    from .issues import did_you_mean
    issues: list[ValidationIssue] = []
    bad: set[str] = set()
    for wid, wf_refs in refs.items():
        for target, path in wf_refs:
            if target not in found:
                line, col = marks_of[wid].at(path)
                issues.append(ValidationIssue(found[wid].source or wid, line, col, format_path(path),
                                              f"unknown sub-workflow {target!r}{did_you_mean(target, found)}"))
                bad.add(wid)
    graph = {wid: [t for t, _ in wf_refs] for wid, wf_refs in refs.items()}
    for cycle in find_cycles(graph):
        for wid, nxt in itertools.pairwise(cycle):
            path = next((p for t, p in refs[wid] if t == nxt), ())
            line, col = marks_of[wid].at(path)
            issues.append(ValidationIssue(found[wid].source or wid, line, col, format_path(path),
                                          f"sub-workflow cycle: {' -> '.join(cycle)}"))
            bad.add(wid)
    # A workflow that runs a removed one cannot run either.
    changed = True
    while changed:
        changed = False
        for wid, wf_refs in refs.items():
            if wid not in bad and any(t in bad for t, _ in wf_refs):
                bad.add(wid)
                changed = True
                target = next(t for t, _ in wf_refs if t in bad)
                path = next(p for t, p in wf_refs if t == target)
                line, col = marks_of[wid].at(path)
                issues.append(ValidationIssue(found[wid].source or wid, line, col, format_path(path),
                                              f"sub-workflow {target!r} is invalid, so this workflow is too"))
    for wid in bad:
        found.pop(wid, None)
    return issues
