"""One partition stream read through a Redis consumer group, from trio (each call crosses once).

Errors as the sink's (weir.sinks.redis_sink.call_redis): SinkUnavailable for what time cures.
"""

from __future__ import annotations

from typing import Any

import attrs
import redis.asyncio as aioredis
import redis.exceptions as rex

from weir.deliver.decisions import Claimed, parse_entry_id
from weir.deliver.stream_replies import Entry, Fields, entries_of, pack, pending_rows
from weir.sinks.redis_sink import call_packed, call_redis

__all__ = ["ConsumerGroup", "Entry", "Fields", "GroupInfo"]
_ACK_PAGE = 10_000  # ids per XACK: a file's worth in one command would be a multi-MB request
_PENDING_PAGE = 10_000  # entries per XPENDING reply


@attrs.frozen(kw_only=True)
class GroupInfo:
    """The group's state as XINFO GROUPS reports it.

    Attributes:
        pending: entries delivered to a consumer and not acknowledged (the pending list's length).
        lag: entries in the stream after the group's last-delivered id; None where Redis cannot
            tell (before Redis 7, or after entries between were deleted).
    """

    pending: int
    lag: int | None


class ConsumerGroup:
    """XREADGROUP / XAUTOCLAIM / XACK of one stream for one consumer of one group.

    Args:
        client: a redis.asyncio client (decode_responses=False), used inside the asyncio loop.
        shown_url: the server, for messages (redacted).
        stream: the partition's events stream key.
        dead_stream: the delivery dead-letter stream (same hash tag: written with the XACK atomically).
    """

    def __init__(self, client: aioredis.Redis, shown_url: str, *, stream: str, dead_stream: str, group: str,
                 consumer: str) -> None:
        self._client = client
        self._url = shown_url
        self.stream = stream
        self.dead_stream = dead_stream
        self.group = group
        self.consumer = consumer

    async def ensure_group(self, start: str) -> bool:
        """Create the group at ``start`` ("0" or "$") unless it exists (the stream too, empty);
        whether it was created."""
        return await call_redis(self._url, self._ensure_aio, start)

    async def _ensure_aio(self, start: str) -> bool:
        try:
            await self._client.xgroup_create(self.stream, self.group, id=start, mkstream=True)
        except rex.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    async def read_new(self, count: int, block_ms: int) -> list[Entry]:
        """Entries never delivered to the group (``>``), waiting up to ``block_ms`` for some."""
        reply = await call_redis(self._url, call_packed, self._client, pack(
            "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count, "BLOCK", block_ms,
            "STREAMS", self.stream, ">"))
        return entries_of(reply)[0]

    async def read_own_pending(self, after: str, count: int) -> tuple[list[Entry], list[str]]:
        """Entries pending to this consumer (delivered to it, not acknowledged), after ``after``,
        and the ids of those no longer in the stream (deleted or trimmed since).

        Reading them counts as a delivery (Redis raises their delivery count).
        """
        reply = await call_redis(self._url, call_packed, self._client, pack(
            "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count, "STREAMS", self.stream, after))
        return entries_of(reply)

    async def autoclaim(self, min_idle: float, cursor: str, count: int) -> tuple[str, list[Entry], list[str]]:
        """XAUTOCLAIM: entries pending for at least ``min_idle`` s to any consumer become ours.

        Returns the cursor for the next call ("0-0": the scan went round), the entries claimed,
        and the ids of claimed entries no longer in the stream (deleted or trimmed).
        """
        reply = await call_redis(self._url, self._client.xautoclaim, self.stream, self.group, self.consumer,
                                 int(min_idle * 1000), cursor, count)
        next_cursor = _text(reply[0])
        entries: list[Entry] = []
        gone: list[str] = []
        for entry_id, fields in reply[1]:
            if entry_id is None:  # Redis 6.2: a deleted entry is a nil, without its id (it stays pending)
                continue
            if not fields:  # a deleted entry (weir's entries always have fields)
                gone.append(_text(entry_id))
                continue
            entries.append(Entry(entry_id=_text(entry_id), fields=_field_dict(fields)))
        if len(reply) > 2:  # Redis 7: deleted ids listed apart (and dropped from the pending list)
            gone += [_text(entry_id) for entry_id in reply[2]]
        return next_cursor, entries, gone

    async def pending_of(self, first: str, last: str, *, mine: bool = False) -> dict[str, tuple[str, int, int]]:
        """Pending entries from ``first`` to ``last`` (only this consumer's with ``mine``), paged:
        id -> (consumer, idle ms, deliveries)."""
        out: dict[str, tuple[str, int, int]] = {}
        start = first
        while True:
            mine_only = (self.consumer,) if mine else ()
            page = await call_redis(self._url, call_packed, self._client, pack(
                "XPENDING", self.stream, self.group, start, last, _PENDING_PAGE, *mine_only))
            out.update(pending_rows(page))
            if len(page) < _PENDING_PAGE:
                return out
            start = "(" + _text(page[-1][0])  # exclusive ranges: Redis 6.2 on

    async def deliveries(self, entry_ids: list[str]) -> list[Claimed]:
        """Each entry's delivery count (those no longer pending are left out)."""
        if not entry_ids:
            return []
        ordered = sorted(entry_ids, key=parse_entry_id)
        pending = await self.pending_of(ordered[0], ordered[-1])
        return [Claimed(entry_id=entry_id, deliveries=pending[entry_id][2]) for entry_id in entry_ids
                if entry_id in pending]

    async def ack(self, entry_ids: list[str]) -> None:
        for start in range(0, len(entry_ids), _ACK_PAGE):
            await call_redis(self._url, call_packed, self._client,
                             pack("XACK", self.stream, self.group, *entry_ids[start:start + _ACK_PAGE]))

    async def dead_letter(self, entry: Entry, reason: str, deliveries: int) -> None:
        """Append ``entry`` with ``reason`` to the delivery dead-letter stream and acknowledge it, in
        one MULTI (both keys share the partition's hash tag), so it is dead-lettered once."""
        await call_redis(self._url, self._dead_letter_aio, entry, reason, deliveries)

    async def _dead_letter_aio(self, entry: Entry, reason: str, deliveries: int) -> None:
        # Bytes names, as the entry's: an entry's own "reason" field must not replace weir's.
        letter: dict[bytes, Any] = {b"entry_id": entry.entry_id, b"reason": reason, b"deliveries": deliveries,
                                    b"group": self.group, b"consumer": self.consumer}
        for name, value in entry.fields.items():
            letter.setdefault(name, value)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_stream, letter)
            pipe.xack(self.stream, self.group, entry.entry_id)
            await pipe.execute()

    async def consumer_seen(self) -> tuple[int, int] | None:
        """This consumer name's pending count and milliseconds since it last read or claimed
        (XINFO CONSUMERS); None: no such consumer in the group (or no group yet)."""
        consumers = await call_redis(self._url, self._consumers_aio)
        for consumer in consumers:
            fields = {_text(name): value for name, value in consumer.items()}
            if _text(fields["name"]) == self.consumer:
                return int(fields["pending"]), int(fields["idle"])
        return None

    async def _consumers_aio(self) -> list[dict[Any, Any]]:
        try:
            return await self._client.xinfo_consumers(self.stream, self.group)
        except rex.ResponseError as exc:
            if "no such key" in str(exc).lower() or "NOGROUP" in str(exc):
                return []
            raise

    async def info(self) -> GroupInfo | None:
        """XINFO GROUPS of the stream: this group's pending count and lag (None: no such group)."""
        groups = await call_redis(self._url, self._groups_aio)
        for group in groups:
            fields = {_text(name): value for name, value in group.items()}
            if _text(fields["name"]) == self.group:
                lag = fields.get("lag")
                return GroupInfo(pending=int(fields["pending"]), lag=None if lag is None else int(lag))
        return None

    async def _groups_aio(self) -> list[dict[Any, Any]]:
        try:
            return await self._client.xinfo_groups(self.stream)
        except rex.ResponseError as exc:
            if "no such key" in str(exc).lower():  # the stream does not exist (yet): no group either
                return []
            raise

    async def read_range(self, first: str, last: str, count: int) -> list[Entry]:
        """The stream's entries from ``first`` to ``last`` (XRANGE), for dead-lettering by id."""
        reply = await call_redis(self._url, self._client.xrange, self.stream, first, last, count)
        return [Entry(entry_id=_text(entry_id), fields=fields) for entry_id, fields in reply]


def _field_dict(fields: Any) -> Fields:
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[::2], fields[1::2]))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
