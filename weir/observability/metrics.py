"""Prometheus metrics of one running service, read from its live statistics at scrape time.

Nothing here is on the hot path: the actors keep plain counters (``ShardStats``, ``PipelineStats``,
the supervisors' and breakers' own statistics), updated per chunk or per batch, and
:class:`ServiceCollector` turns them into metric families when Prometheus scrapes. Each service
has its own :class:`~prometheus_client.CollectorRegistry` (never the global one), so tests can run
several services in one process. The metric names and their meaning are in docs/observability.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from weir import __version__
from weir.observability.health import (
    breakers_of,
    durable_lag_seconds,
    partition_labels,
    partition_problems,
)
from weir.redact import redact_text
from weir.supervision import BreakerState

#: weir_breaker_state values.
BREAKER_STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

_PARTITION = ["source", "partition"]
_DELIVERY = ["pipeline", "source", "partition"]


def new_registry(service: Any, *, stale_after: float) -> CollectorRegistry:
    """A registry with weir's metrics for ``service`` and the process's (CPU, memory, fds, GC)."""
    registry = CollectorRegistry()
    registry.register(ServiceCollector(service, stale_after=stale_after))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class ServiceCollector(Collector):
    """Reads a running :class:`weir.app.Service` (partitions, supervisors, breakers) at scrape time.

    ``collect`` must run in the service's trio thread (the HTTP handler does): ages are computed
    on trio's clock, which the statistics use.
    """

    def __init__(self, service: Any, *, stale_after: float) -> None:
        self.service = service
        self.stale_after = stale_after

    def describe(self) -> list[Metric]:
        # Names are fixed, but the service may not be complete at registration: describe nothing
        # (no duplicate-name check needed in a private registry) rather than collect early.
        return []

    def collect(self) -> Iterator[Metric]:
        now = trio.current_time()
        yield from self._info()
        yield from self._partitions(now)
        yield from self._supervisors()
        yield from self._breakers()
        yield from self._deliveries(now)
        yield from self._endpoint()

    def _info(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("weir_build_info", "weir's version (always 1).", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

    def _partitions(self, now: float) -> Iterator[Metric]:
        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=_PARTITION)

        def gauge(name: str, doc: str, labels: list[str] = _PARTITION) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels)

        received = counter("weir_events_received", "Events (payloads) read from the network by the source, replays included.")
        filtered = counter("weir_events_filtered", "Events dropped by the filter (their position still advances the cursor).")
        persisted = counter("weir_events_persisted", "Events appended to the Redis stream (durable).")
        skipped = counter("weir_events_skipped", "Events not appended because they were already durable (a replay, or the retry of a timed-out write that landed).")
        dead = counter("weir_events_dead_lettered", "Malformed events appended to the dead-letter stream (durable).")
        gaps = counter("weir_gaps", "Gaps detected in the network's stream (events that can no longer be replayed).")
        missed = counter("weir_gap_missed_events", "Events known to be missing because of gaps (when the gap says how many).")
        connects = counter("weir_source_connects", "Connection attempts of the source (the first one included).")
        reconnects = counter("weir_source_reconnects", "Reconnections of the source after a network fault.")
        purged = counter("weir_pipeline_purged_chunks", "Chunks discarded from the channels at a pipeline restart (replayed by the source).")
        rollbacks = counter("weir_sink_rollbacks", "Times Redis was found holding an older cursor than it had acknowledged (lost writes, read again).")
        # Sources that judge what they receive by identity (Farcaster, the AT Protocol).
        duplicates = counter("weir_source_duplicates",
                             "Events the source skipped because it had already handed them on (by identity: a replay, a repeat).")
        reordered = counter("weir_source_reordered",
                            "Events that arrived after a later one (Jetstream around its replay-to-live cutover) and were kept.")
        implausible = counter("weir_source_implausible_positions",
                              "Items dead-lettered because their position was not plausible (the cursor stayed).")
        refusals = counter("weir_source_refusals", "Times the source dropped its node for sending implausible positions in a row.")
        oversized = counter("weir_source_oversized", "Items over the source's size limit, dead-lettered with their first bytes.")
        invalid = counter("weir_source_invalid_messages", "Messages whose hash or signature did not verify, dead-lettered.")
        in_workers = counter("weir_source_verified_in_workers",
                             "Messages verified in worker processes (farcaster.verify_workers) rather than in the reader.")
        stale_revs = counter("weir_source_stale_revs", "AT Protocol commits dropped because their rev was not above the repository's last.")
        # Ethereum chains only (sources whose statistics count reorgs).
        reorgs = counter("weir_reorgs", "Chain reorganisations: blocks the source had seen were replaced by another branch.")
        deep_reorgs = counter("weir_deep_reorgs", "Reorgs deeper than the confirmation depth: logs emitted as confirmed were retracted.")
        ignored_heads = CounterMetricFamily(
            "weir_ignored_heads", "Announced heads that moved nothing: repeat (a block weir holds, or its ancestor), "
            "behind (the node is behind weir's tip), stale (no longer the node's block at its height), "
            "implausible (dead-lettered: a number that does not follow its parent's, or far above the node's head).",
            labels=[*_PARTITION, "reason"],
        )
        connected = gauge("weir_source_connected", "1 while the source is receiving from the network, else 0.")
        position = gauge("weir_source_position", "Position (event id) of the last event the source received.")
        cursor = gauge("weir_cursor_position", "Durable cursor: the position through which the partition is persisted.")
        lag_events = gauge("weir_lag_events", "Events past the filter and not yet durable.")
        lag_seconds = gauge("weir_lag_seconds", "0 when nothing is pending, else seconds since the last durable write.")
        write_age = gauge("weir_last_write_age_seconds", "Seconds since the last durable write of the partition.")
        ready = gauge("weir_partition_ready", "1 when the partition passes the /readyz checks (breakers aside), else 0.")
        depth = gauge("weir_channel_depth", "Items buffered in a pipeline channel (chunks; batches for batch_to_persist).",
                      [*_PARTITION, "channel"])
        capacity = gauge("weir_channel_capacity", "Buffer size of a pipeline channel.", [*_PARTITION, "channel"])
        batch_size = HistogramMetricFamily("weir_batch_size_events", "Events per batch written to Redis.", labels=_PARTITION)
        latency = HistogramMetricFamily(
            "weir_persist_latency_seconds", "Seconds from receipt of an event to its durable write.", labels=_PARTITION
        )

        for view in self.service.partitions:
            labels = list(partition_labels(view))
            source, sink = view.source, view.sink
            received.add_metric(labels, getattr(source, "received", 0))
            filtered.add_metric(labels, sink.filtered + getattr(source, "filtered", 0))  # filter actor + source-side filters
            persisted.add_metric(labels, sink.appended)
            skipped.add_metric(labels, sink.skipped)
            dead.add_metric(labels, sink.dead_appended)
            gaps.add_metric(labels, getattr(source, "gaps", 0))
            missed.add_metric(labels, getattr(source, "missed_events", 0))
            connects.add_metric(labels, getattr(source, "connects", 0))
            reconnects.add_metric(labels, getattr(source, "reconnects", 0))
            purged.add_metric(labels, sink.purged)
            rollbacks.add_metric(labels, sink.mark.rollbacks if sink.mark is not None else 0)
            if hasattr(source, "duplicates_skipped"):
                duplicates.add_metric(labels, source.duplicates_skipped)
            if hasattr(source, "reordered"):
                reordered.add_metric(labels, source.reordered)
            for family, attribute in ((implausible, "implausible_positions"), (refusals, "refusals"),
                                      (oversized, "oversized"), (invalid, "invalid_messages"),
                                      (in_workers, "verified_in_workers")):
                if hasattr(source, attribute):
                    family.add_metric(labels, getattr(source, attribute))
            if hasattr(source, "stale_revs"):
                stale_revs.add_metric(labels, source.stale_revs)
            if hasattr(source, "deep_reorgs"):
                reorgs.add_metric(labels, source.reorgs)
                deep_reorgs.add_metric(labels, source.deep_reorgs)
                for reason, count in (("repeat", source.repeated_heads), ("behind", source.behind_heads),
                                      ("stale", source.stale_heads), ("implausible", source.implausible_heads)):
                    ignored_heads.add_metric([*labels, reason], count)
            connected.add_metric(labels, 1 if getattr(source, "connected", False) else 0)
            last_id = getattr(source, "last_id", None)
            if isinstance(last_id, (int, float)):
                position.add_metric(labels, last_id)
            if sink.cursor is not None:
                cursor.add_metric(labels, sink.cursor)
            lag_events.add_metric(labels, sink.in_flight)
            lag_seconds.add_metric(labels, durable_lag_seconds(view, now))
            if sink.last_write is not None:
                write_age.add_metric(labels, now - sink.last_write)
            ready.add_metric(labels, 0 if partition_problems(view, now=now, stale_after=self.stale_after) else 1)
            for name, channel in sink.channels.items():
                stats = channel.statistics()
                depth.add_metric([*labels, name], stats.current_buffer_used)
                capacity.add_metric([*labels, name], stats.max_buffer_size)
            for family, buckets in ((batch_size, sink.batch_sizes), (latency, sink.latency)):
                family.add_metric(labels, buckets.cumulative(), sum_value=buckets.sum)

        yield from self._progress()
        yield from (received, filtered, persisted, skipped, dead, gaps, missed, connects, reconnects, purged,
                    rollbacks, duplicates, reordered, implausible, refusals, oversized, invalid, in_workers, stale_revs,
                    reorgs, deep_reorgs, ignored_heads, connected, position, cursor,
                    lag_events, lag_seconds, write_age, ready, depth, capacity,
                    batch_size, latency)

    def _progress(self) -> Iterator[Metric]:
        """Toward the network's head, as weir.observability.progress_report last sampled it."""
        head = GaugeMetricFamily("weir_source_head", "The network's head, in the unit of weir_source_progress_position "
                                 "(Farcaster: the shard's block height known; Ethereum: the newest block).", labels=_PARTITION)
        position = GaugeMetricFamily("weir_source_progress_position", "weir's position in the head's unit (a block; "
                                     "AT Protocol: the seq or time_us).", labels=_PARTITION)
        lag = GaugeMetricFamily("weir_source_lag", "Head minus weir's position, in the head's unit (0 at the head).", labels=_PARTITION)
        lag_seconds = GaugeMetricFamily("weir_source_lag_seconds", "How far behind the head weir is, in network time.",
                                        labels=_PARTITION)
        rate = GaugeMetricFamily("weir_source_catchup_rate", "weir's position's smoothed growth, head units per second.",
                                 labels=_PARTITION)
        eta = GaugeMetricFamily("weir_source_eta_seconds", "Seconds until weir reaches the head at the current rates "
                                "(absent when not catching up).", labels=_PARTITION)
        for view in self.service.partitions:
            progress = getattr(view, "progress", None)
            if progress is None:
                continue
            labels = list(partition_labels(view))
            for family, value in ((head, progress.head), (position, progress.position), (lag, progress.lag),
                                  (lag_seconds, progress.lag_seconds), (eta, progress.eta_seconds),
                                  (rate, progress.rate if progress.head is not None else None)):
                if value is not None:
                    family.add_metric(labels, value)
        yield from (head, position, lag, lag_seconds, rate, eta)

    def _supervisors(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily("weir_supervisor_restarts", "Restart decisions taken by a supervisor.", labels=["supervisor"])
        escalations = CounterMetricFamily(
            "weir_supervisor_escalations", "Times a supervisor gave up (restart intensity exceeded) and escalated.",
            labels=["supervisor"],
        )
        child_restarts = CounterMetricFamily(
            "weir_child_restarts", "Times a child was started again after its first start.", labels=["supervisor", "child"]
        )
        child_running = GaugeMetricFamily("weir_child_running", "1 while the child is running, else 0.", labels=["supervisor", "child"])
        for supervisor in self.service.supervisors():
            stats = supervisor.statistics()
            restarts.add_metric([stats.name], stats.restarts)
            escalations.add_metric([stats.name], stats.escalations)
            for child in stats.children:
                child_restarts.add_metric([stats.name, child.name], child.restarts)
                child_running.add_metric([stats.name, child.name], 1 if child.running else 0)
        yield from (restarts, escalations, child_restarts, child_running)

    def _breakers(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("weir_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", labels=["breaker"])
        # The same by name: 1 for the state it is in, 0 for the others (no code to look up in a dashboard).
        status = GaugeMetricFamily("weir_breaker_status", "1 for the circuit breaker's current state, 0 for the others.",
                                   labels=["breaker", "state"])
        opened = CounterMetricFamily("weir_breaker_opened", "Times the breaker opened (re-opening after a failed trial included).",
                                     labels=["breaker"])
        failures = GaugeMetricFamily("weir_breaker_consecutive_failures", "Failures since the breaker's last success.",
                                     labels=["breaker"])
        for breaker, _network in breakers_of(self.service):
            stats = breaker.statistics()
            label = [redact_text(stats.name)]  # named after a node's URL: never with its credentials
            state.add_metric(label, BREAKER_STATE_VALUE[stats.state])
            for each in BreakerState:
                status.add_metric([*label, each.value], 1 if each is stats.state else 0)
            opened.add_metric(label, stats.opened_count)
            failures.add_metric(label, stats.consecutive_failures)
        yield from (state, status, opened, failures)

    def _deliveries(self, now: float) -> Iterator[Metric]:
        """Delivery (weir.deliver.monitor): ``weir deliver``'s, or ``weir run``'s with deliver.with_run."""
        views = getattr(self.service, "deliveries", None)
        if views is None:
            return

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=_DELIVERY)

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=_DELIVERY)

        counters = {
            "delivered": counter("weir_deliver_entries_delivered", "Entries acknowledged after the target made them durable."),
            "skipped": counter("weir_deliver_entries_skipped",
                               "Entries read again that the target already held durably (acknowledged, not written again)."),
            "refused": counter("weir_deliver_entries_refused", "Refusals by the target (every delivery of a refused entry counts)."),
            "dead_lettered": counter("weir_deliver_entries_dead_lettered", "Entries moved to the delivery dead-letter stream."),
            "claimed": counter("weir_deliver_entries_claimed", "Entries taken over from idle consumers (XAUTOCLAIM)."),
            "given_back": counter("weir_deliver_entries_given_back",
                                  "Entries the target could not take for now (a webhook endpoint down), left pending."),
            "commits": counter("weir_deliver_commits", "Units the target committed (Parquet: files)."),
            "aborts": counter("weir_deliver_aborts",
                              "Prepared units dropped because their entries were no longer safely this consumer's."),
        }
        pending = gauge("weir_deliver_pending", "Entries delivered to a consumer of the group and not acknowledged "
                        "(XPENDING count, sampled).")
        lag = gauge("weir_deliver_lag_entries", "Entries in the stream after the group's last-delivered id (XINFO GROUPS "
                    "lag, sampled; absent where Redis cannot tell).")
        sample_age = gauge("weir_deliver_sample_age_seconds", "Seconds since pending and lag were last sampled.")
        last_commit = gauge("weir_deliver_last_commit_timestamp_seconds", "Unix time of the last commit.")
        for view in views:
            labels = [view.pipeline, view.source, view.partition]
            for attribute, family in counters.items():
                family.add_metric(labels, getattr(view.stats, attribute))
            for family, value in ((pending, view.pending), (lag, view.lag), (last_commit, view.stats.last_commit),
                                  (sample_age, None if view.sampled_at is None else now - view.sampled_at)):
                if value is not None:
                    family.add_metric(labels, value)
        yield from (*counters.values(), pending, lag, sample_age, last_commit)

    def _endpoint(self) -> Iterator[Metric]:
        endpoint = getattr(self.service, "observability", None)
        if endpoint is None:
            return
        yield GaugeMetricFamily("weir_http_connections", "Connections open to this endpoint.", value=endpoint.connections)
        yield CounterMetricFamily("weir_http_connections_refused",
                                  "Connections answered 503 because metrics.max_connections were open.", value=endpoint.refused)
