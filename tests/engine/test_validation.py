"""Validation at load time: every problem at once, each with file:line:column and a readable message."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import jsonschema
import pytest

from sdd.engine import (
    ValidationIssue,
    WorkflowValidationError,
    load_workflow,
    load_workflow_dirs,
    path_problem,
    validate_text,
    workflow_schema,
)
from sdd.engine.specs.parsing import MAX_NESTING
from sdd.engine.specs.schema_check import schema
from tests.support.trusted import trusted_dir

ACTIONS = ["quarantine_file", "restore_file", "send_notification", "kill_process"]


def issues_of(text: str, actions: list[str] | None = ACTIONS) -> list[str]:
    return [str(i) for i in validate_text(textwrap.dedent(text), "wf.yaml", actions)]


def test_valid_workflow_has_no_issues() -> None:
    assert issues_of("""\
        workflow_id: ok
        trigger: {type: malware, when: 'detection.severity in ["critical", "high"]', priority: 10}
        steps:
          - step_id: quarantine
            action: quarantine_file
            params: {file_path: "{{ detection.file_path }}"}
            rollback_action: restore_file
          - step_id: notify
            type: notification
            condition: 'steps.quarantine.status == "completed"'
        """) == []


def test_every_issue_is_reported_at_once_with_line_and_column() -> None:
    found = issues_of("""\
        workflow_id: bad
        stpes: []
        steps:
          - step_id: quarantine
            type: acton
            action: quarantine_fil
            on_failure: rolback
            max_retries: -1
            timeout: soon
          - step_id: quarantine
            action: send_notification
            condition: 'steps.quarantin.status == "completed"'
          - step_id: c
            action: kill_process
            condition: 'detection.pid >'
            params: {pid: "{{ detection.process_id }", other: "{{ 1 + }}"}
        """)
    expected = [
        "wf.yaml:2:1: unknown key 'stpes' in the workflow (did you mean 'steps'?)",
        ("wf.yaml:5:11: steps[0].type must be one of action, notification, script, webhook, condition, loop, "
        "parallel, branch, workflow; got 'acton' (did you mean 'action'?)"),
        "wf.yaml:6:13: unknown action 'quarantine_fil' (did you mean 'quarantine_file'?)",
        ("wf.yaml:7:17: steps[0].on_failure must be one of abort, continue, skip, retry, rollback; got 'rolback' "
        "(did you mean 'rollback'?)"),
        "wf.yaml:8:18: steps[0].max_retries must be at least 0; got -1",
        ("wf.yaml:9:14: steps[0].timeout must be a positive number of seconds or a duration like '30s', '5m', "
        "'6h'; got 'soon'"),
        "wf.yaml:10:14: duplicate step_id 'quarantine' (first used at steps[0], line 4)",
        "wf.yaml:12:16: refers to unknown step 'quarantin' (did you mean 'quarantine'?)",
    ]
    assert found[:len(expected)] == expected
    assert any(f.startswith("wf.yaml:15:16: steps[2].condition does not parse") for f in found)
    assert any(f.startswith("wf.yaml:16:19: steps[2].params.pid: template does not parse") for f in found)
    assert any(f.startswith("wf.yaml:16:55: steps[2].params.other: template does not parse") for f in found)


def test_wrong_types_are_named() -> None:
    found = issues_of("""\
        workflow_id: t
        rollback_on_failure: "sometimes"
        steps:
          - step_id: a
            action: quarantine_file
            params: [1, 2]
        """)
    assert "wf.yaml:2:22: rollback_on_failure must be true or false, not a string ('sometimes')" in found
    assert "wf.yaml:6:13: steps[0].params must be a mapping, not a list ([1, 2])" in found


def test_missing_keys_and_type_requirements() -> None:
    found = issues_of("""\
        name: no id
        steps:
          - action: quarantine_file
          - {step_id: l, type: loop}
          - {step_id: p, type: parallel}
          - {step_id: b, type: branch}
          - {step_id: w, type: workflow}
          - {step_id: c, type: condition}
          - {step_id: x, type: action, items: [1]}
        """)
    text = "\n".join(found)
    for needle in ["the workflow is missing the required key 'workflow_id'",
                   "steps[0] is missing the required key 'step_id'",
                   "loop step 'l' needs 'items'", "loop step 'l' needs 'step' or 'steps'",
                   "parallel step 'p' needs 'steps'", "branch step 'b' needs 'conditions'",
                   "workflow step 'w' needs 'workflow_id'", "condition step 'c' needs a 'condition'",
                   "'items' does not apply to an action step (only to loop)"]:
        assert needle in text


def test_branch_shape_is_checked() -> None:
    found = "\n".join(issues_of("""\
        workflow_id: t
        steps:
          - step_id: b
            type: branch
            conditions:
              - else: []
              - elif: "1 == 1"
                then: []
              - if: "1 ==="
              - {if: "True", else: []}
        """))
    assert "'else' must be the last case of a branch" in found
    assert "case 2 needs 'then'" in found or "does not parse" in found
    assert "exactly one of 'if', 'elif' or 'else'" in found


def test_unknown_actions_are_only_checked_when_actions_are_given() -> None:
    text = "workflow_id: t\nsteps: [{step_id: a, action: whatever}]\n"
    assert issues_of(text, None) == []
    assert issues_of(text, []) == ["wf.yaml:2:30: unknown action 'whatever'"]


def test_self_reference_is_a_cycle() -> None:
    found = issues_of("workflow_id: me\nsteps: [{step_id: a, type: workflow, workflow_id: me}]\n")
    assert found == ["wf.yaml:2:51: workflow 'me' runs itself as a sub-workflow (a cycle)"]


def test_yaml_syntax_errors_and_non_mappings() -> None:
    assert issues_of("workflow_id: [\n")[0].startswith("wf.yaml:2:1: YAML syntax error")
    assert issues_of("- 1\n") == [("wf.yaml:1:1: a workflow file must hold a mapping (workflow_id, steps, ...), "
                                  "not a list")]
    assert issues_of("") == ["wf.yaml:1:1: empty workflow file"]
    assert "duplicate key 'steps'" in issues_of("workflow_id: a\nsteps: []\nsteps: []\n")[0]


def test_yaml_alias_bomb_is_refused_quickly() -> None:
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    found = issues_of("\n".join(lines) + "\nworkflow_id: x\nsteps: []\n")
    assert found and "too large" in found[0]


def test_a_yaml_alias_that_contains_itself_is_an_issue_naming_file_and_line() -> None:
    found = issues_of("""\
        workflow_id: x
        steps: &all
          - step_id: loop
            type: loop
            items: [1]
            steps: *all
        """)
    assert found == [("wf.yaml:6:12: the alias *all is used inside the value it names (anchored &all on "
                     "line 2): a value may not contain itself")]
    assert issues_of("a: &x {b: [1, {c: *x}]}\n")[0].startswith("wf.yaml:1:19: the alias *x is used inside")


def test_yaml_nested_past_the_bound_is_one_issue_naming_where_flow_block_or_map() -> None:
    # `[[[[...` of thousands of brackets made the scanner work for seconds (on the daemon's loop, for any
    # `workflows.validate` caller) and then failed as a bare "maximum recursion depth exceeded".
    bound = f"collections nest deeper than {MAX_NESTING} levels"
    assert issues_of("a: " + "[" * 200_000) == [f"wf.yaml:1:{4 + MAX_NESTING}: YAML syntax error: {bound}"]
    assert issues_of("a: " + "{b: " * 50_000)[0].endswith(bound)
    block = "a:\n" + "".join(" " * i + "-\n" for i in range(1, 900))
    assert issues_of(block) == [f"wf.yaml:{MAX_NESTING + 1}:{MAX_NESTING + 1}: YAML syntax error: {bound}"]
    # Up to the bound is YAML like any other (here: not a workflow, so the schema speaks, not the parser).
    deepest = "a: " + "[" * (MAX_NESTING - 1) + "]" * (MAX_NESTING - 1) + "\n"
    assert not any(bound in issue for issue in issues_of(deepest))
    assert not any("YAML" in issue for issue in issues_of(deepest))


def test_a_yaml_alias_used_beside_its_anchor_is_fine() -> None:
    found = issues_of("""\
        workflow_id: x
        context: {a: &one [1, 2], b: *one}
        steps: [{step_id: s, action: kill_process, params: {process_id: 1}}]
        """)
    assert found == []


def test_recursive_alias_fails_load_workflow_dirs_with_an_issue_not_an_exception(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("workflow_id: bad\nsteps: &s [{step_id: a, type: parallel, steps: *s}]\n")
    (tmp_path / "good.yaml").write_text("workflow_id: good\nsteps: [{step_id: a, action: kill_process}]\n")
    found, issues = load_workflow_dirs([tmp_path], ACTIONS)
    assert list(found) == ["good"]
    assert [str(i) for i in issues] == [(f"{tmp_path / 'bad.yaml'}:2:48: the alias *s is used inside the value "
                                        "it names (anchored &s on line 2): a value may not contain itself")]


def test_params_given_as_a_string_get_one_message() -> None:
    found = issues_of("workflow_id: a\nsteps:\n  - {step_id: q, action: kill_process, params: 'pid=1'}\n")
    assert found == ["wf.yaml:3:48: steps[0].params must be a mapping, not a string ('pid=1')"]


def test_load_workflow_raises_with_all_issues(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("workflow_id: w\nsteps:\n  - {step_id: a, action: x, on_failure: nope}\n  - {step_id: a}\n")
    with pytest.raises(WorkflowValidationError) as err:
        load_workflow(path)
    assert [i.line for i in err.value.issues] == [3, 4, 4]   # bad on_failure; duplicate id; no action
    assert all(isinstance(i, ValidationIssue) and i.file == str(path) for i in err.value.issues)
    assert str(err.value).splitlines()[0].startswith(f"{path}:3:")


def test_published_schema_is_a_valid_json_schema() -> None:
    cls = jsonschema.validators.validator_for(schema())
    cls.check_schema(schema())
    shipped = Path(__file__).resolve().parents[2] / "sdd" / "engine" / "specs" / "workflow.schema.json"
    assert json.loads(shipped.read_text()) == schema()


def _write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def test_load_workflow_dirs_later_dirs_override(tmp_path: Path) -> None:
    _write(tmp_path / "a", "x.yaml", "workflow_id: x\nname: first\nsteps: [{step_id: s, action: quarantine_file}]\n")
    _write(tmp_path / "a", "y.yml", "workflow_id: y\nsteps: [{step_id: s, action: quarantine_file}]\n")
    _write(tmp_path / "b", "x2.yaml", "workflow_id: x\nname: second\nsteps: [{step_id: s, action: kill_process}]\n")
    _write(tmp_path / "b", "README.txt", "not a workflow")
    found, issues = load_workflow_dirs([tmp_path / "a", tmp_path / "missing", tmp_path / "b"], ACTIONS)
    assert issues == []
    assert found["x"].name == "second" and set(found) == {"x", "y"}


def test_load_workflow_dirs_reports_bad_files_and_keeps_good_ones(tmp_path: Path) -> None:
    _write(tmp_path, "good.yaml", "workflow_id: good\nsteps: [{step_id: s, action: quarantine_file}]\n")
    _write(tmp_path, "bad.yaml", "workflow_id: bad\nsteps: [{step_id: s, action: nuke}]\n")
    _write(tmp_path, "dup.yaml", "workflow_id: good\nsteps: [{step_id: s, action: quarantine_file}]\n")
    found, issues = load_workflow_dirs([tmp_path], ACTIONS)
    assert set(found) == {"good"}
    messages = [str(i) for i in issues]
    assert any("bad.yaml:2:30: unknown action 'nuke'" in m for m in messages)
    assert any("dup.yaml" in m and "also defined in" in m for m in messages)


def test_load_workflow_dirs_checks_subworkflows_across_the_set(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", "workflow_id: a\nsteps: [{step_id: s, type: workflow, workflow_id: b}]\n")
    _write(tmp_path, "b.yaml", """\
        workflow_id: b
        steps:
          - step_id: br
            type: branch
            conditions: [{if: "True", then: a}]
        """)
    _write(tmp_path, "c.yaml", "workflow_id: c\nsteps: [{step_id: s, type: workflow, workflow_id: nope}]\n")
    _write(tmp_path, "d.yaml", "workflow_id: d\nsteps: [{step_id: s, type: workflow, workflow_id: c}]\n")
    _write(tmp_path, "e.yaml", "workflow_id: e\nsteps: [{step_id: s, type: workflow, workflow_id: f}]\n")
    _write(tmp_path, "f.yaml", "workflow_id: f\nsteps: [{step_id: s, action: quarantine_file}]\n")
    found, issues = load_workflow_dirs([tmp_path], ACTIONS)
    assert set(found) == {"e", "f"}
    messages = [str(i) for i in issues]
    assert any("a.yaml:2:51: sub-workflow cycle: a -> b -> a" in m for m in messages)
    assert any("b.yaml:5:37: sub-workflow cycle" in m for m in messages)
    assert any("c.yaml:2:51: unknown sub-workflow 'nope'" in m for m in messages)
    assert any("d.yaml" in m and "sub-workflow 'c' is invalid" in m for m in messages)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@needs_root
def test_require_root_owned_refuses_files_others_can_write() -> None:
    d = trusted_dir("wf")
    text = "workflow_id: {}\nsteps: [{{step_id: s, action: quarantine_file}}]\n"
    _write(d, "ok.yaml", text.format("ok")).chmod(0o644)
    theirs = _write(d, "theirs.yaml", text.format("theirs"))
    os.chown(theirs, 1000, 0)
    _write(d, "group.yaml", text.format("group")).chmod(0o664)
    _write(d, "world.yaml", text.format("world")).chmod(0o646)
    (d / "link.yaml").symlink_to(d / "ok.yaml")
    found, issues = load_workflow_dirs([d], ACTIONS, require_root_owned=True)
    assert set(found) == {"ok"}
    why = {Path(i.file).name: i.message for i in issues}
    assert why["theirs.yaml"] == "refused: owned by uid 1000, not root (a workflow runs as root)"
    assert why["group.yaml"].startswith("refused: writable by its group")
    assert why["world.yaml"].startswith("refused: writable by everyone")
    assert why["link.yaml"] == "refused: it is a symbolic link"
    found, issues = load_workflow_dirs([d], ACTIONS)
    assert "theirs" in found and "world" in found


@needs_root
def test_require_root_owned_refuses_a_writable_directory() -> None:
    d = trusted_dir("wf") / "wf"
    _write(d, "ok.yaml", "workflow_id: ok\nsteps: [{step_id: s, action: quarantine_file}]\n")
    d.chmod(0o777)
    found, issues = load_workflow_dirs([d], ACTIONS, require_root_owned=True)
    assert found == {} and issues[0].message == (f"directory refused: {d} is writable by everyone (mode 0777) "
                                                 "(its workflows would run as root)")


@needs_root
def test_require_root_owned_checks_every_directory_above_and_each_symlink_on_the_way(tmp_path: Path) -> None:
    base = trusted_dir("chain")
    real = base / "etc" / "workflows"
    _write(real, "ok.yaml", "workflow_id: ok\nsteps: [{step_id: s, action: quarantine_file}]\n")
    (base / "via").symlink_to(real)                      # a root-owned link in a root-owned directory: fine
    found, issues = load_workflow_dirs([base / "via"], ACTIONS, require_root_owned=True)
    assert (set(found), issues) == ({"ok"}, [])
    (base / "etc").chmod(0o775)                          # a group-writable directory above it
    found, issues = load_workflow_dirs([real], ACTIONS, require_root_owned=True)
    assert found == {} and f"{base / 'etc'} is writable by its group" in issues[0].message
    (base / "etc").chmod(0o755)
    os.chown(base / "etc", 1000, 0)                      # a directory above it that a user owns
    found, issues = load_workflow_dirs([base / "via"], ACTIONS, require_root_owned=True)
    assert found == {} and f"{base / 'etc'} is owned by uid 1000, not root" in issues[0].message
    os.chown(base / "etc", 0, 0)
    # The same trusted directory, reached through a symlink that sits in world-writable /tmp: refused.
    tmp_path.chmod(0o1777)
    (tmp_path / "wf").symlink_to(real)
    found, issues = load_workflow_dirs([tmp_path / "wf"], ACTIONS, require_root_owned=True)
    assert found == {} and "/tmp is writable by everyone (mode 1777)" in issues[0].message


@needs_root
def test_path_problem_follows_links_component_by_component() -> None:
    base = trusted_dir("links")
    (base / "a" / "b").mkdir(parents=True)
    (base / "a" / "up").symlink_to("..")                 # relative links resolve from where they are
    (base / "loop").symlink_to(base / "loop")
    open_dir = base / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o1777)
    (open_dir / "link").symlink_to(base / "a")
    assert path_problem(base / "a" / "up" / "a" / "b") is None
    assert path_problem(base / "loop") == f"{base / 'loop'}: too many symbolic links"
    assert path_problem(open_dir / "link") == f"{open_dir} is writable by everyone (mode 1777)"
    assert path_problem(open_dir / "link", allow_sticky=True) == (f"{open_dir / 'link'} is a symbolic link "
                                                                  f"inside the world-writable {open_dir}")
    assert path_problem(base / "missing") == f"{base / 'missing'} cannot be used: No such file or directory"
    assert path_problem("relative/path") == "relative/path is not an absolute path"
    os.lchown(base / "a" / "up", 1000, 1000)
    assert path_problem(base / "a" / "up" / "a") == f"{base / 'a' / 'up'} is a symbolic link owned by uid 1000"


# ---- action parameters, checked against the action's declaration -------------------------------------

DECLARED = {
    "send_notification": {"message": {"type": "string", "required": True},
                          "channel": {"type": ["string", "list"], "enum": ["desktop", "email", "syslog", "log"]},
                          "urgency": {"type": "string", "enum": ["low", "normal", "critical"]},
                          "recipient": {"type": ["string", "list"]}},
    "quarantine_file": {"file_path": {"type": "string", "required": True}},
    "restore_file": {"quarantine_id": {"type": "string"}, "file_path": {"type": "string"}},
    "kill_process": {"process_id": {"type": ["integer", "string"], "required": True},
                     "timeout": {"type": "number"}},
    "plugin": None,   # undeclared: anything goes
}


def _step_issues(step: str) -> list[str]:
    return issues_of(f"workflow_id: w\nsteps:\n  - {step}\n", DECLARED)   # type: ignore[arg-type]


def test_an_unknown_parameter_is_an_error_with_did_you_mean() -> None:
    assert _step_issues("{step_id: n, type: notification, params: {mesage: hi, message: x}}") == [
        ("wf.yaml:3:47: send_notification has no parameter 'mesage' (did you mean 'message'?) "
        "(it accepts: channel, message, recipient, urgency)")]


def test_a_missing_required_parameter_is_an_error() -> None:
    assert _step_issues("{step_id: q, action: quarantine_file}") == [
        "wf.yaml:3:5: quarantine_file needs the parameter 'file_path'"]
    assert _step_issues("{step_id: q, action: quarantine_file, params: {}}") == [
        "wf.yaml:3:51: quarantine_file needs the parameter 'file_path'"]


def test_literal_values_of_the_wrong_type_or_outside_the_enum_are_errors() -> None:
    found = _step_issues("{step_id: n, type: notification, params: {message: 5, channel: [log, pagr], "
                         "urgency: urgent}}")
    assert found == [
        "wf.yaml:3:56: parameter 'message' of send_notification must be a string, not a whole number (5)",
        ("wf.yaml:3:68: parameter 'channel' of send_notification must be one of desktop, email, syslog, log; "
        "got 'pagr'"),
        ("wf.yaml:3:90: parameter 'urgency' of send_notification must be one of low, normal, critical; "
        "got 'urgent'")]
    assert _step_issues("{step_id: k, action: kill_process, params: {process_id: true}}") == [
        ("wf.yaml:3:61: parameter 'process_id' of kill_process must be a whole number or a string, not a "
        "boolean (True)")]


def test_templated_values_are_checked_only_when_rendered() -> None:
    assert _step_issues("{step_id: n, type: notification, params: {message: '{{ detection.x }}', "
                        "channel: '{{ context.channel }}', urgency: '{{ context.u }}'}}") == []
    assert _step_issues("{step_id: k, action: kill_process, params: {process_id: '{{ detection.process_id }}'}}") == []


def test_undeclared_actions_and_unknown_catalogues_are_not_checked() -> None:
    assert _step_issues("{step_id: p, action: plugin, params: {anything: [1, 2]}}") == []
    assert issues_of("workflow_id: w\nsteps: [{step_id: q, action: quarantine_file, params: {x: 1}}]\n",
                     ["quarantine_file"]) == []


def test_a_rollback_gets_the_steps_params_unless_it_has_its_own() -> None:
    found = _step_issues("{step_id: q, action: quarantine_file, params: {file_path: /x}, "
                         "rollback_action: restore_file, rollback_params: {quarantine_id: 5}}")
    assert found == [("wf.yaml:3:132: parameter 'quarantine_id' of restore_file must be a string, not a whole "
                     "number (5)")]
    assert _step_issues("{step_id: k, action: kill_process, params: {process_id: 1, timeout: 2}, "
                        "rollback_action: restore_file}") == [
        ("wf.yaml:3:49: restore_file has no parameter 'process_id' (it accepts: file_path, quarantine_id) "
        "(a step's params go to its rollback_action unless it has rollback_params)"),
        ("wf.yaml:3:64: restore_file has no parameter 'timeout' (it accepts: file_path, quarantine_id) "
        "(a step's params go to its rollback_action unless it has rollback_params)")]


def test_param_declarations_are_in_the_published_schema() -> None:
    published = workflow_schema(DECLARED)
    jsonschema.validators.validator_for(published).check_schema(published)
    validator = jsonschema.validators.validator_for(published)(published)

    def errors(step: dict[str, object]) -> list[str]:
        return sorted(e.message for e in validator.iter_errors({"workflow_id": "w", "steps": [step]}))
    assert errors({"step_id": "n", "type": "notification", "params": {"message": "{{ d.x }}",
                                                                     "channel": ["log", "{{ c }}"]}}) == []
    assert errors({"step_id": "n", "action": "send_notification", "params": {"mesage": "x"}}) == [
        "'message' is a required property", "Additional properties are not allowed ('mesage' was unexpected)"]
    assert errors({"step_id": "p", "action": "plugin", "params": {"x": 1}}) == []
    assert "allOf" not in schema()["$defs"]["step"]   # the structure alone declares no action


def test_numbers_that_are_not_finite_are_refused_wherever_they_are() -> None:
    # `every: .nan` loaded, and the scheduler's loop then never slept nor yielded: the daemon stopped
    # answering and its log grew by the line. YAML spells NaN and infinity; no field of a workflow means them.
    found = issues_of("""\
        workflow_id: nan
        trigger: {schedule: {every: .nan}}
        timeout: .inf
        steps:
          - step_id: a
            action: kill_process
            params: {process_id: 1, signal: -.Inf}
            retry_delay: .NaN
            max_retries: 1
            total_timeout: 1.0e+999
        """)
    assert found == [
        "wf.yaml:2:29: trigger.schedule.every must be a finite number, got .nan",
        "wf.yaml:3:10: timeout must be a finite number, got .inf",
        "wf.yaml:7:37: steps[0].params.signal must be a finite number, got -.inf",
        "wf.yaml:8:18: steps[0].retry_delay must be a finite number, got .nan",
        "wf.yaml:10:20: steps[0].total_timeout must be a finite number, got .inf",
    ]


def test_durations_given_as_text_must_be_positive_and_a_schedule_at_least_a_second() -> None:
    found = issues_of("""\
        workflow_id: zero
        trigger: {schedule: {every: 1ms}}
        timeout: 0s
        steps:
          - step_id: a
            action: kill_process
            params: {process_id: 1}
            timeout: 0m
        """)
    assert found == [
        "wf.yaml:2:29: trigger.schedule.every must be at least 1s, got '1ms'",
        "wf.yaml:3:10: timeout must be a positive duration, got '0s'",
        "wf.yaml:8:14: steps[0].timeout must be a positive duration, got '0m'",
    ]
    assert issues_of("workflow_id: half\ntrigger: {schedule: {every: 0.5}}\nsteps: [{step_id: a, action: kill_process, "
                     "params: {process_id: 1}}]\n") == [
        "wf.yaml:2:29: trigger.schedule.every must be at least 1s, got 0.5"]
    # The positive controls: a second, hours, and a numeric zero still get the schema's one message.
    for every in ("1", "1s", "6h", "1h30m"):
        assert issues_of(f"workflow_id: ok\ntrigger: {{schedule: {{every: {every}}}}}\nsteps: [{{step_id: a, "
                         "action: kill_process, params: {process_id: 1}}]\n") == [], every
    zero = issues_of("workflow_id: z\ntrigger: {schedule: {every: 0}}\nsteps: [{step_id: a, action: kill_process, "
                     "params: {process_id: 1}}]\n")
    assert len(zero) == 1 and "must be a positive number of seconds" in zero[0]
