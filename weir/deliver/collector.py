"""Python's garbage collector set for batch delivery (measured: docs/performance.md, "Delivery").

A batch of 1,000 entries is ~10,000 container objects alive together (the reply's lists, the
field dicts, the entries, the target's messages), freed together by reference counting once the
batch is acknowledged: almost no cyclic garbage. With the default thresholds (a young collection
every 700 allocations) each batch ran ~14 young collections that walked it and promoted it a
generation up, and every few batches a full collection walked the whole heap (every module, the
clients' state: ~130–145 ms each on the loaded 2-core VM), ~13 µs of CPU per entry in all, a third of
the delivery loop's. So the heap as it is once the service started is frozen (never walked
again), and a young collection runs every 100,000 allocations, by when most batches are gone.
"""

from __future__ import annotations

import gc

from weir.collector import freeze_startup_heap

YOUNG_COLLECTION_EVERY = 100_000  # allocations (Python's default: 700)


def tune_for_batches() -> None:
    """Freeze what exists now and make young collections rare, for the whole process: called by
    ``weir deliver`` (weir/cli.py) once its modules are imported, not by serve_deliver, which
    also runs inside ``weir run`` (deliver.with_run) and tests. Idempotent."""
    freeze_startup_heap()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_COLLECTION_EVERY), middle, old)
