"""``weir run``'s collector setting (weir/collector.py, applied by weir/cli.py once the service has
started), undone afterwards: it is process-wide."""

from __future__ import annotations

import gc

import trio

from weir.cli import _freeze_then


async def test_weir_run_freezes_the_start_up_heap_then_runs_its_hook_and_keeps_the_thresholds() -> None:
    before = gc.get_threshold()
    gc.unfreeze()
    seen: list[int] = []

    async def hook(service: object, stopping: trio.Event) -> None:
        seen.append(gc.get_freeze_count())

    try:
        await _freeze_then(hook)(object(), trio.Event())
        assert seen and seen[0] > 0  # frozen before the hook ran
        assert gc.get_threshold() == before  # weir run keeps Python's thresholds (RSS, docs/performance.md)
        gc.unfreeze()
        await _freeze_then(None)(object(), trio.Event())  # without a progress line
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
