"""The values that flow through every pipeline channel.

Connection actors turn network data into :class:`Event` values without decoding payloads, group
them into :class:`Chunk` lists (one per network read, so an atomic source position is never split),
and send chunks down bounded memory channels: connection -> filter -> batch -> persist (which
receives ``list[Chunk]``, one batch per atomic write).
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen(slots=True, kw_only=True)
class Event:
    """One network event with its original wire bytes and cheaply extracted routing keys.

    Attributes:
        source: network name, e.g. ``"farcaster"``; part of the Redis key.
        partition: the unit that has one cursor (a Snapchain shard, a relay host, a chain).
        position: strictly increasing within the partition; the cursor unit.
        sub: order of several events that share one position (e.g. ops of one commit); the Redis
            stream entry id is ``"{position}-{sub}"``. All events of one position travel in one
            chunk and are persisted in one batch.
        kind: the source's event type name, e.g. ``"MERGE_MESSAGE"``.
        key: identity for deduplication by consumers (message hash, CID, block hash + index).
        payload: the original bytes as received (persisted as they are: "passthrough").
        timestamp: source time, unix seconds (0.0 when the source gives none).
        received: ``trio.current_time()``-style monotonic receipt time, for latency figures.
        fields: per-network routing keys (e.g. ``fid``, ``msg_type``) that filters and sinks use.
    """

    source: str
    partition: str
    position: int
    sub: int = 0
    kind: str
    key: bytes = b""
    payload: bytes
    timestamp: float = 0.0
    received: float = 0.0
    fields: dict[str, Any] = attrs.field(factory=dict)

    @property
    def stream_id(self) -> str:
        return f"{self.position}-{self.sub}"


@attrs.frozen(slots=True, kw_only=True)
class DeadLetter:
    """Network data that could not be parsed, kept with the reason instead of being dropped.

    ``position`` is set when it is known, so a replay does not dead-letter the same data twice.
    """

    source: str
    partition: str
    payload: bytes
    reason: str
    position: int | None = None
    received: float = 0.0


@attrs.frozen(slots=True, kw_only=True)
class Chunk:
    """A list of events from one partition, plus how far the source has been read.

    ``through`` is the highest source position this chunk covers, including events that a filter
    dropped: persisting it as the cursor lets a restart resume after them instead of re-reading.
    ``token`` is optional source-specific resume state stored beside the cursor (e.g. a block hash).
    """

    partition: str
    events: list[Event]
    through: int
    dead: list[DeadLetter] = attrs.field(factory=list)
    token: str = ""

    def with_events(self, events: list[Event]) -> Chunk:
        return attrs.evolve(self, events=events)

