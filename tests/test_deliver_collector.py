"""weir deliver's collector settings (weir/deliver/collector.py), undone afterwards: they are process-wide."""

from __future__ import annotations

import gc

from weir.deliver.collector import YOUNG_COLLECTION_EVERY, tune_for_batches


def test_the_heap_is_frozen_and_young_collections_are_rare() -> None:
    before = gc.get_threshold()
    try:
        tune_for_batches()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_COLLECTION_EVERY, before[1], before[2])
        tune_for_batches()  # again: the same settings
        assert gc.get_threshold() == (YOUNG_COLLECTION_EVERY, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
