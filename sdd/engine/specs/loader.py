"""Loading workflows: one file (`load_workflow`), a text (`validate_text`, `load_text`), the configured
directories (`load_workflow_dirs`: later dirs override the same workflow_id; sub-workflow references and
cycles checked across the set; optionally refusing files and directories that anyone but root could
write), or a dict (`Workflow.from_dict`, installed on the model here with `Workflow.from_yaml` and
`WorkflowStep.from_dict`).

Each document is parsed (`parsing.py`), validated (`validation.py`) and only then built into the model
(`build_workflow`), so nothing is built from a document with issues.
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ValidationIssue, WorkflowValidationError
from .compilation import precompile
from .durations import parse_duration
from .issues import Marks, did_you_mean, format_path
from .model import BranchCase, Schedule, Trigger, Workflow, WorkflowStep
from .params import Catalogue, catalogue
from .parsing import parse_yaml
from .semantic_check import find_cycles
from .trust import path_problem
from .validation import collect_issues, validate_step_dict, validate_workflow_dict
from .vocabulary import DEFAULT_ON_FAILURE, OnFalse, OnInterrupt, StepType

MAX_FILE_SIZE = 1 << 20
YAML_SUFFIXES = (".yaml", ".yml")


def _check_text(text: str, source: str, actions: Catalogue | None
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
    return _check_text(yaml_text, name, catalogue(actions))[2]


def load_text(yaml_text: str, name: str = "<text>", actions: Any = None) -> Workflow:
    """The workflow in `yaml_text`, or WorkflowValidationError with every issue."""
    if len(yaml_text) > MAX_FILE_SIZE:
        raise WorkflowValidationError([ValidationIssue(name, None, None, "", f"larger than {MAX_FILE_SIZE} bytes")])
    data, _, issues, _ = _check_text(yaml_text, name, catalogue(actions))
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
    data, _, issues, _subs = _check_text(text, source, catalogue(actions))
    if issues:
        raise WorkflowValidationError(issues)
    return precompile(build_workflow(data, source=source))


def load_workflow_dirs(dirs: Iterable[str | Path], actions: Any = None, *, require_root_owned: bool = False
                       ) -> tuple[dict[str, Workflow], list[ValidationIssue]]:
    """Every valid workflow in `dirs` (later dirs override the same workflow_id) and every issue found.

    A workflow whose sub-workflows are unknown or form a cycle is left out and reported. With
    `require_root_owned` (system mode), a directory is refused unless it and every directory above it,
    symlinks resolved, is root's and writable by no one else (`trust.path_problem`), and so is a file that
    anyone but root could write."""
    names = catalogue(actions)
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
            reason = path_problem(directory.absolute())
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


# ---- building the model from validated dicts ---------------------------------------------------------

def _target(value: Any) -> tuple[list[WorkflowStep], str | None]:
    if isinstance(value, str):
        return [], value
    if isinstance(value, Mapping):
        return [build_step(value)], None
    return [build_step(s) for s in value or ()], None


def build_step(d: Mapping[str, Any]) -> WorkflowStep:
    step_type = d.get("type", d.get("step_type", StepType.ACTION.value))
    children: list[WorkflowStep] = [build_step(s) for s in d.get("steps") or ()]
    if d.get("step") is not None:
        children.insert(0, build_step(d["step"]))
    cases: list[BranchCase] = []
    for case in d.get("conditions") or ():
        if "else" in case:
            steps, wf = _target(case["else"])
            cases.append(BranchCase(None, steps, wf))
        else:
            steps, wf = _target(case.get("then"))
            cases.append(BranchCase(case.get("if", case.get("elif")), steps, wf))
    retries = d.get("max_retries", d.get("retries"))
    return WorkflowStep(
        step_id=str(d["step_id"]),
        name=d.get("name") or "",
        step_type=step_type,
        action=d.get("action"),
        params=dict(d.get("params") or {}),
        condition=d.get("condition"),
        on_failure=d.get("on_failure", DEFAULT_ON_FAILURE),
        rollback_action=d.get("rollback_action"),
        rollback_params=d.get("rollback_params"),
        timeout=None if d.get("timeout") is None else parse_duration(d["timeout"]),
        total_timeout=None if d.get("total_timeout") is None else parse_duration(d["total_timeout"]),
        max_retries=retries,
        retry_delay=float(d.get("retry_delay", 1.0)),
        backoff=float(d.get("backoff", 2.0)),
        max_delay=float(d.get("max_delay", 30.0)),
        jitter=float(d.get("jitter", 0.1)),
        output=d.get("output"),
        description=d.get("description") or "",
        items=d.get("items"),
        item_name=d.get("as", d.get("item_name", "item")),
        concurrency=int(d.get("concurrency", 1)),
        steps=children,
        fail_fast=bool(d.get("fail_fast", True)),
        conditions=cases,
        workflow_id=d.get("workflow_id", d.get("workflow")),
        on_false=d.get("on_false", OnFalse.STOP.value),
    )


def build_trigger(d: Mapping[str, Any] | None) -> Trigger | None:
    if d is None:
        return None
    types = d.get("type", d.get("types", ()))
    if isinstance(types, str):
        types = (types,)
    sched = d.get("schedule")
    schedule = None
    if sched is not None:
        schedule = Schedule(every=None if sched.get("every") is None else parse_duration(sched["every"]),
                            at=sched.get("at"))
    return Trigger(types=tuple(types), when=d.get("when"), priority=int(d.get("priority", 0)),
                   schedule=schedule)


def build_workflow(d: Mapping[str, Any], source: str | None = None) -> Workflow:
    return Workflow(
        workflow_id=str(d["workflow_id"]),
        name=d.get("name") or str(d["workflow_id"]),
        description=d.get("description") or "",
        steps=[build_step(s) for s in d.get("steps") or ()],
        trigger=build_trigger(d.get("trigger")),
        rollback_on_failure=bool(d.get("rollback_on_failure", False)),
        timeout=None if d.get("timeout") is None else parse_duration(d["timeout"]),
        context=dict(d.get("context") or {}),
        on_interrupt=d.get("on_interrupt", OnInterrupt.FAIL.value),
        source=source if source is not None else d.get("source"),
    )


# ---- the model's constructors (see model.py) ---------------------------------------------------------

def workflow_from_dict(data: Mapping[str, Any], source: str | None = None) -> Workflow:
    """A validated workflow from a plain dict (a stored snapshot, an API request, code)."""
    validate_workflow_dict(data, source=source)
    return precompile(build_workflow(data, source=source))


def step_from_dict(data: Mapping[str, Any]) -> WorkflowStep:
    validate_step_dict(data)
    return build_step(data)


Workflow.from_dict = staticmethod(workflow_from_dict)
Workflow.from_yaml = staticmethod(load_workflow)
WorkflowStep.from_dict = staticmethod(step_from_dict)

__all__ = [
    "MAX_FILE_SIZE",
    "YAML_SUFFIXES",
    "build_step",
    "build_trigger",
    "build_workflow",
    "load_text",
    "load_workflow",
    "load_workflow_dirs",
    "parse_duration",
    "step_from_dict",
    "validate_text",
    "workflow_from_dict",
]
