"""What /metrics shows of delivery: each (pipeline, partition)'s counters and its group's state.

The counters are the actors' own (:class:`~weir.deliver.actor.DeliveryStats`); the group's
pending count and lag are Redis's, sampled every ``SAMPLE_INTERVAL`` by :func:`sample_groups`
(XINFO GROUPS, one command per stream) rather than at scrape time, so a scrape never waits on
Redis. weir.observability.metrics reads :class:`DeliveryViews` (docs/observability.md).
"""

from __future__ import annotations

import logging

import attrs
import trio

from weir.deliver.actor import DeliveryStats
from weir.deliver.group import ConsumerGroup
from weir.sinks.redis_sink import SinkUnavailable

log = logging.getLogger("weir.deliver")

SAMPLE_INTERVAL = 1.0  # seconds between XINFO GROUPS samples of every stream


@attrs.define(eq=False)
class DeliveryView:
    """One (pipeline, partition): its counters and the last sample of its consumer group.

    Attributes:
        pending, lag: as last sampled (weir.deliver.group.GroupInfo); None before a sample
            succeeded (``lag`` also where Redis cannot tell).
        sampled_at: ``trio.current_time()`` of the last successful sample.
        sample_error: why the last sample failed (None when it succeeded).
    """

    pipeline: str
    source: str
    partition: str
    group_name: str
    stats: DeliveryStats = attrs.field(factory=DeliveryStats)
    group: ConsumerGroup | None = None  # the current run's (a restart of the tree opens a new client)
    pending: int | None = None
    lag: int | None = None
    sampled_at: float | None = None
    sample_error: str | None = None


@attrs.define(eq=False)
class DeliveryViews:
    """Every delivery view of a service, by child name ``"<pipeline>/<partition>"``; kept across
    restarts of the delivery tree, so its counters are cumulative like the service's."""

    by_child: dict[str, DeliveryView] = attrs.field(factory=dict)

    def view(self, child: str, *, pipeline: str, source: str, partition: str, group: ConsumerGroup) -> DeliveryView:
        found = self.by_child.get(child)
        if found is None:
            found = self.by_child[child] = DeliveryView(pipeline=pipeline, source=source, partition=partition,
                                                        group_name=group.group)
        found.group = group
        return found

    def __iter__(self):
        return iter(self.by_child.values())


async def sample_groups(views: DeliveryViews, interval: float = SAMPLE_INTERVAL) -> None:
    """Sample every view's group (pending, lag) until cancelled; Redis being away leaves the last
    values and records the error (a metric, not a crash: delivery itself retries on its own)."""
    while True:
        for view in list(views):
            if view.group is None:
                continue
            try:
                info = await view.group.info()
            except SinkUnavailable as exc:
                view.sample_error = str(exc)
                continue
            except Exception as exc:  # observing must never take delivery down: shown on /readyz instead
                if view.sample_error is None:
                    log.warning("%s/%s: cannot sample its consumer group: %r", view.pipeline, view.partition, exc,
                                extra={"event": "deliver_sample_failed", "pipeline": view.pipeline, "error": repr(exc)})
                view.sample_error = repr(exc)
                continue
            view.sample_error = None if info is not None else "no such consumer group"
            if info is not None:
                view.pending, view.lag, view.sampled_at = info.pending, info.lag, trio.current_time()
        await trio.sleep(interval)
