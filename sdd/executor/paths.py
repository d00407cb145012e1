"""Path rules the executor and the actions share: an absolute, normalised path, and "strictly inside a root".

Both are lexical on purpose: `..` is refused rather than resolved, and every walk of a path afterwards
refuses symlinks (`safepath.py`), so the lexical answer is the real one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable


def checked_abs_path(value: str, fail: Callable[[str, str], Exception], name: str) -> str:
    """An absolute path with no `.`/`..` components, normalised (repeated and trailing slashes dropped).

    `..` is refused rather than resolved: resolving it lexically could walk out of an allowed root, and
    resolving it on disk would follow symlinks."""
    if not value.startswith("/"):
        raise fail(name, f"must be an absolute path, got {value!r:.200}")
    parts = [p for p in value.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise fail(name, f"must not contain '.' or '..' components, got {value!r:.200}")
    if not parts:
        raise fail(name, "must not be the root directory")
    return "/" + "/".join(parts)


def under_roots(path: str, roots: Iterable[os.PathLike[str] | str]) -> bool:
    """Whether a normalised absolute path lies strictly inside one of the roots (lexically: symlinks are
    refused separately while walking, so the lexical answer is the real one)."""
    for root in roots:
        r = os.path.normpath(os.fspath(root))
        prefix = r if r.endswith("/") else r + "/"
        if path.startswith(prefix) and len(path) > len(prefix):
            return True
    return False
