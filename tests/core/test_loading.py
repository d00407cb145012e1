"""Settling what the daemon loaded: frozen out of the collector's way, and let go again on a reload."""

from __future__ import annotations

import gc
import weakref

from sdd.daemon.loading import YOUNG_COLLECTION_THRESHOLD, freeze_long_lived


class _Node:
    pass


def test_frozen_objects_are_left_alone_until_the_next_reload_lets_them_go() -> None:
    thresholds = gc.get_threshold()
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
        gc.set_threshold(*thresholds)


def test_young_collections_wait_for_the_threshold_and_cyclic_garbage_still_goes_by_itself() -> None:
    thresholds = gc.get_threshold()
    try:
        freeze_long_lived()
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *thresholds[1:])
        gc.collect()
        node = _Node()
        node.self = node  # type: ignore[attr-defined]
        ref = weakref.ref(node)
        del node
        kept = [[] for _ in range(YOUNG_COLLECTION_THRESHOLD // 2)]  # net new objects below the threshold
        assert ref() is not None  # no collection yet
        kept += [[] for _ in range(YOUNG_COLLECTION_THRESHOLD)]  # past it: a collection runs by itself
        assert ref() is None
        del kept
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
