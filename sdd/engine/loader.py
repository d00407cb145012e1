"""Loading workflows from YAML files (interim)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .model import Workflow, build_workflow
from .validation import validate_workflow_dict


def load_workflow(path: str | Path, actions: Any = None) -> Workflow:
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    validate_workflow_dict(data, source=str(path))
    return build_workflow(data, source=str(path))
