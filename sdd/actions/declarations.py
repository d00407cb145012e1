"""The parameters of every built-in action, in one table: name → parameter → {type, required, enum,
description}. It is the one source for what a workflow may pass: `builtin.py` attaches it to each
`ActionSpec` (so `validate`, `check-config` and the published workflow JSON Schema check params at load
time), and `params.Params` takes each action's accepted and required names from it at run time.

Types: "string", "integer", "number", "boolean", "list", "mapping", "any" (a list of them when several fit).
An `enum` lists the values a string (or each item of a list) may take. Add a parameter here and read it in
the action; a parameter the table does not name is refused, at load and at run time.
`python -m sdd.actions.schema` prints the published workflow schema (shipped as `workflow.schema.json`).
"""

from __future__ import annotations

from typing import Any

from sdd.engine import workflow_schema

DECLARATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "quarantine_file": {
        "file_path": {"type": "string", "required": True,
                      "description": "Absolute path of the file to quarantine, inside allowed_roots."},
        "quarantine_dir": {"type": "string",
                           "description": "Accepted for the original engine's workflows and ignored: the vault "
                                          "is configuration."},
        "detection_id": {"type": "string", "description": "Recorded with the item (default: the detection's)."},
        "threat_name": {"type": "string", "description": "Recorded with the item (default: the detection's)."},
    },
    "restore_file": {
        "quarantine_id": {"type": "string", "description": "The vault item to restore (32 hex digits)."},
        "file_path": {"type": "string", "description": "Restore what was quarantined from this path."},
        "on_conflict": {"type": "string", "enum": ["fail", "rename", "overwrite"],
                        "description": "When the original path exists again (default fail)."},
        "force": {"type": "boolean",
                  "description": "Restore although the directory's owner or inode changed since quarantine."},
        "quarantine_dir": {"type": "string", "description": "Accepted and ignored (the quarantine step's)."},
        "detection_id": {"type": "string", "description": "Accepted and ignored (the quarantine step's)."},
        "threat_name": {"type": "string", "description": "Accepted and ignored (the quarantine step's)."},
    },
    "restore_detection": {
        "undo_of": {"type": "string",
                    "description": "The id of the detection to undo (default: the undo request's undo_of)."},
        "on_conflict": {"type": "string", "enum": ["fail", "rename", "overwrite"],
                        "description": "When an original path exists again (default fail)."},
    },
    "delete_file": {
        "file_path": {"type": "string", "required": True,
                      "description": "Absolute path of the file to delete, inside allowed_roots."},
    },
    "kill_process": {
        "process_id": {"type": ["integer", "string"],
                       "description": "The process (a number, or a string of digits); a claim to verify."},
        "file_path": {"type": "string",
                      "description": "The detected file: stop the processes executing, holding or mapping it."},
        "quarantine_id": {"type": "string",
                          "description": "The vault item whose recorded inode identifies the evidence."},
        "trust_process_id": {"type": "boolean",
                             "description": "Trust process_id without an evidence link (needs its start time)."},
        "process_start_time": {"type": "number",
                               "description": "Its start time in epoch seconds (default: the detection's)."},
        "include_children": {"type": "boolean", "description": "Stop its descendants too."},
        "timeout": {"type": "number", "description": "Seconds between SIGTERM and SIGKILL (default 5)."},
    },
    "send_notification": {
        "message": {"type": "string", "required": True, "description": "The body."},
        "recipient": {"type": ["string", "list"], "description": "Email address(es); implies email."},
        "title": {"type": "string", "description": "The title or subject (default 'sdd')."},
        "urgency": {"type": "string", "enum": ["low", "normal", "critical"], "description": "Default normal."},
        "channel": {"type": ["string", "list"], "enum": ["desktop", "email", "syslog", "log"],
                    "description": "Where to deliver (one or a list)."},
    },
    "update_definitions": {
        "timeout": {"type": "number", "description": "Seconds the updater may take (default 600)."},
    },
    "run_scan": {
        "path": {"type": "string", "required": True, "description": "Absolute path to scan."},
        "scan_type": {"type": "string", "enum": ["quick", "full", "file", "custom"], "description": "Default full."},
        "timeout": {"type": "number", "description": "Seconds the scan may take (default 3600)."},
        "engine": {"type": "string", "enum": ["clamav", "yara"],
                   "description": "clamav (the configured scanner, default) or yara ([actions] yara_rules)."},
        "max_file_size": {"type": "integer",
                          "description": "yara: bytes; larger files are skipped and counted (default 64 MiB)."},
    },
    "generate_report": {
        "report_type": {"type": "string", "description": "Name of the report (letters, digits, _ and -)."},
        "format": {"type": "string", "enum": ["json", "html", "both"], "description": "Default both."},
        "steps": {"type": "mapping", "description": "Step results to report when the run log has none."},
        "include_context": {"type": "boolean", "description": "Include the run's context (default true)."},
    },
    "call_webhook": {
        "url": {"type": "string", "required": True, "description": "An http(s) URL, no credentials in it."},
        "payload": {"type": "any", "description": "The JSON body."},
        "method": {"type": "string", "description": "An HTTP method (default POST)."},
        "headers": {"type": "mapping", "description": "Extra headers (names and string values)."},
        "timeout": {"type": "number", "description": "Seconds (default 10)."},
    },
    "run_script": {
        "script": {"type": "string", "required": True, "description": "An executable in scripts_dir."},
        "args": {"type": "list", "description": "Its arguments (strings or numbers)."},
        "env": {"type": "mapping", "description": "Extra environment variables."},
        "stdin": {"type": "any", "description": "Sent as JSON on its standard input."},
        "timeout": {"type": "number", "description": "Seconds (default 60)."},
    },
    "add_exclusion": {
        "sha256": {"type": "string", "description": "Exclude this content."},
        "path": {"type": "string", "description": "Exclude this path."},
        "file_path": {"type": "string", "description": "Alias of path."},
        "reason": {"type": "string", "description": "Why."},
        "actor": {"type": "string", "description": "Who (default 'workflow')."},
    },
    "remove_exclusion": {
        "sha256": {"type": "string", "description": "The excluded content."},
        "path": {"type": "string", "description": "The excluded path."},
        "file_path": {"type": "string", "description": "Alias of path."},
        "actor": {"type": "string", "description": "Who (default 'workflow')."},
    },
    "log_false_positive": {
        "detection_id": {"type": "string", "description": "Default: the detection's id."},
        "file_path": {"type": "string", "description": "Default: the detection's file_path."},
        "sha256": {"type": "string", "description": "The file's SHA-256."},
        "threat_name": {"type": "string", "description": "Default: the detection's threat_name."},
        "reason": {"type": "string", "description": "Why it is a false positive."},
        "reported_by": {"type": "string", "description": "Who (default 'workflow')."},
        "quarantine_id": {"type": "string", "description": "The vault item, if it was quarantined."},
    },
}


def published_schema() -> dict[str, Any]:
    """The workflow JSON Schema with every built-in action's parameters (what `workflow.schema.json` holds)."""
    return workflow_schema(DECLARATIONS)

