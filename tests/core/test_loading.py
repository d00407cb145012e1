"""Settling what the daemon loaded: frozen out of the collector's way, and let go again on a reload."""

from __future__ import annotations

import gc
import weakref

from sdd.daemon.loading import freeze_long_lived


class _Node:
    pass


def test_frozen_objects_are_left_alone_until_the_next_reload_lets_them_go() -> None:
    try:
        node = _Node()
        node.self = node  # type: ignore[attr-defined]  # a cycle: only the collector can free it
        ref = weakref.ref(node)
        freeze_long_lived()  # start-up
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert ref() is not None  # frozen: full collections no longer walk it
        freeze_long_lived()  # a reload: the replaced set is unfrozen and collected first
        assert ref() is None
    finally:
        gc.unfreeze()  # leave the test process as it was
