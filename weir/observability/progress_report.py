"""Progress while weir runs: every partition's source is sampled, its tracker kept, a log line written.

:func:`serve_progress` runs beside the supervision tree (weir.app.serve). Every SAMPLE_INTERVAL it
asks each partition's source statistics for a :class:`~weir.observability.progress.ProgressSample`
(``progress_sample(at, wall)``: the actors only keep the fields it reads), feeds the partition's
:class:`~weir.observability.progress.ProgressTracker` and leaves the result on the partition's
view (``view.progress``), where /metrics and the terminal line read it. Every
``progress.log_interval`` seconds it writes one ``progress`` log event per partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from weir.config import ProgressSettings
from weir.live_line import LiveLine, apart_from_logs
from weir.observability.health import partition_labels
from weir.observability.progress import Progress, ProgressTracker, describe

log = logging.getLogger("weir.observability")

#: Seconds between samples (at most; less when the log interval is shorter).
SAMPLE_INTERVAL = 1.0


def unit_of(view: Any) -> str:
    """What the partition's positions count (``block``, ``position``), for people."""
    return getattr(view.source, "progress_unit", "position")


def sample_partitions(views: Sequence[Any], trackers: dict[str, ProgressTracker], *, window: float, at: float,
                      wall: float) -> None:
    """Sample every view's source once and leave its progress on ``view.progress``."""
    for view in views:
        sample_of = getattr(view.source, "progress_sample", None)
        if sample_of is None:  # a source that does not say where the head is
            continue
        tracker = trackers.get(view.name)
        if tracker is None:
            tracker = trackers[view.name] = ProgressTracker(window=window)
        tracker.observe(sample_of(at, wall))
        view.progress = tracker.progress()


def log_progress(view: Any, progress: Progress) -> None:
    source, partition = partition_labels(view)
    log.info("%s: %s", view.name, describe(progress, unit_of(view)),
             extra={"event": "progress", "source": source, "partition": partition, "unit": unit_of(view),
                    "position": progress.position, "head": progress.head, "lag": progress.lag,
                    "lag_seconds": _rounded(progress.lag_seconds), "rate": _rounded(progress.rate),
                    "head_rate": _rounded(progress.head_rate), "eta_seconds": _rounded(progress.eta_seconds),
                    "catching_up": progress.catching_up, "at_head": progress.at_head})


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def serve_progress(views: Sequence[Any], settings: ProgressSettings, *,
                         wall: Callable[[], float] = time.time,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Sample, and log every ``settings.log_interval`` seconds, until cancelled."""
    trackers: dict[str, ProgressTracker] = {}
    interval = min(SAMPLE_INTERVAL, settings.log_interval)
    next_log = trio.current_time() + settings.log_interval
    task_status.started()
    while True:
        now = trio.current_time()
        sample_partitions(views, trackers, window=settings.window, at=now, wall=wall())
        if now >= next_log:
            next_log = now + settings.log_interval
            for view in views:
                if view.progress is not None:
                    log_progress(view, view.progress)
        await trio.sleep(interval)


def progress_line(views: Sequence[Any]) -> str:
    """Every sampled partition's progress on one line (``weir run``'s live line)."""
    return "  |  ".join(f"{view.name} {describe(view.progress, unit_of(view))}" for view in views if view.progress is not None)


async def show_live_progress(views: Sequence[Any], line: LiveLine) -> None:
    """Redraw :func:`progress_line` every SAMPLE_INTERVAL until cancelled; the last one stays."""
    with apart_from_logs(line):
        try:
            while True:
                text = progress_line(views)
                if text:
                    line.show(text)
                await trio.sleep(SAMPLE_INTERVAL)
        finally:
            line.end()
