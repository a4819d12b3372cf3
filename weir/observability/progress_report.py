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

import attrs
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


@attrs.define(eq=False)
class ProgressSampler:
    """Every partition's tracker; :meth:`sample` leaves each partition's progress on ``view.progress``."""

    window: float
    trackers: dict[str, ProgressTracker] = attrs.Factory(dict)
    failed: set[str] = attrs.Factory(set)  # partitions whose source's sample raised: left alone

    def sample(self, views: Sequence[Any], *, at: float, wall: float) -> None:
        """Sample every view's source once.

        Observability never stops ingestion: a source whose sample fails (a network embedded by a
        user, docs/embedding.md) is logged once and left without progress; the others go on.
        """
        for view in views:
            sample_of = getattr(view.source, "progress_sample", None)
            if sample_of is None or view.name in self.failed:  # a source that does not say where the head is
                continue
            tracker = self.trackers.get(view.name)
            if tracker is None:
                tracker = self.trackers[view.name] = ProgressTracker(window=self.window)
            try:
                tracker.observe(sample_of(at, wall))
            except Exception as exc:
                self.failed.add(view.name)
                source, partition = partition_labels(view)
                log.error("%s: no progress: its source's progress_sample failed: %r", view.name, exc,
                          extra={"event": "progress_failed", "source": source, "partition": partition, "error": repr(exc)})
                continue
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
    sampler = ProgressSampler(window=settings.window)
    interval = min(SAMPLE_INTERVAL, settings.log_interval)
    next_log = trio.current_time() + settings.log_interval
    task_status.started()
    while True:
        now = trio.current_time()
        sampler.sample(views, at=now, wall=wall())
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
