"""How many events a pipeline may hold between its source's read and Redis (the chaos suite's
``source_slowed`` check).

Under a slow Redis the source must stop reading once the pipeline's bounded buffers are full.
Its *rate* during a stall is a poor test of that: it is the sink's rate plus the buffers' room
spread over the stall, so a sink that keeps up better makes the source look faster. What shows a
source that does not slow down is what it holds: events read (``weir_events_received_total``) and
not yet out of the pipeline (:data:`LEFT_THE_PIPELINE`) growing past what the buffers can hold.
"""

from __future__ import annotations

from collections.abc import Sequence

from weir.actors.pipeline import FILTER_TO_BATCH, SOURCE_TO_FILTER
from weir.config import AtprotoSettings, BatchSettings, FarcasterSettings

#: The counters of the events a source read that are no longer in the pipeline: appended to the
#: stream, or not appended by design. ``weir_events_persisted_total`` alone is not enough: when a
#: write times out but lands, its retry finds those events durable and counts them as skipped, so
#: received minus persisted also counted ~1,000-1,500 such events in each backpressure-slow-redis run
#: (session 10): the "unaccounted" read batch per partition of session 9, which no stage held.
LEFT_THE_PIPELINE = (
    "weir_events_persisted_total",
    "weir_events_skipped_total",  # already durable: a timed-out write that landed, or a replay
    "weir_events_dead_lettered_total",
    "weir_events_filtered_total",  # by the filter actor and the source's key filter
    "weir_source_duplicates_total",  # repeats the source dropped before its chunk
)

#: Each source's default read batch (the most events one network read hands on as a chunk).
READ_BATCH = {"farcaster": FarcasterSettings().read_batch, "atproto": AtprotoSettings().read_batch}


def in_flight_bound(source: str, settings: Sequence[str]) -> int | None:
    """The most events one partition's pipeline can hold, given weir's ``--set`` ``settings``;
    None for a source without a read batch.

    A chunk (at most one read batch: the source reads no more at once, and judges what it held
    back past the node's height within the same read) in the source's hands, one in each channel
    slot and one in the filter's; the batch actor's batch and the persist actor's, each under
    ``max_events`` plus one chunk (the batch -> persist hand-over has no slot). Measured at the
    peak of ``backpressure-slow-redis`` (session 10): every one of them full, nothing else held.
    """
    read_batch = _setting(settings, f"{source}.read_batch", READ_BATCH.get(source))
    if read_batch is None:
        return None
    max_events = _setting(settings, "batch.max_events", BatchSettings().max_events)
    assert max_events is not None
    chunks = 1 + SOURCE_TO_FILTER + 1 + FILTER_TO_BATCH  # source, channel, filter, channel
    batch = max_events - 1 + read_batch  # the last chunk added to a batch that was one short of full
    return chunks * read_batch + 2 * batch


def _setting(settings: Sequence[str], name: str, default: int | None) -> int | None:
    value = default
    for each in settings:  # the last one wins, as on weir's command line
        key, _, text = each.partition("=")
        if key == name:
            value = int(text)
    return value
