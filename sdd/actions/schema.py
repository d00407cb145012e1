"""`python -m sdd.actions.schema`: prints the published workflow JSON Schema — the workflow structure plus the
parameters of every built-in action — as shipped in `sdd/actions/workflow.schema.json` (for editors)."""

from __future__ import annotations

import json
import sys

from .declarations import published_schema


def main() -> int:
    json.dump(published_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
