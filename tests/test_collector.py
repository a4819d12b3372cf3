"""``weir run``'s collector setting (weir/collector.py, applied by weir/cli.py after its imports),
undone afterwards: it is process-wide."""

from __future__ import annotations

import gc

from weir.collector import freeze_startup_heap


def test_the_start_up_heap_is_frozen_and_the_thresholds_stay_pythons() -> None:
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == before  # weir run keeps Python's thresholds (RSS, docs/performance.md)
    finally:
        gc.unfreeze()
