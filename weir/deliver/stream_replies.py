"""The delivery loop's stream commands, packed, and their raw replies parsed (pure).

redis-py turned each XREADGROUP entry into a dict through generic helpers, each XPENDING row into
a dict of four names, and encoded each XACK id in Python: ~10 µs per entry, more than the
Redis round trips themselves (docs/performance.md, "Delivery"). Here a command is packed by
hiredis in one call and sent by ``weir.sinks.redis_sink.call_packed``, as the sink sends
EVALSHA; its reply is hiredis's plain lists, parsed in one pass. The parsers are property-tested
against redis-py's own (tests/test_deliver_stream_replies.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import hiredis

Fields = dict[bytes, bytes]


class Entry(NamedTuple):
    """One stream entry as delivered: its id and its fields (docs/redis-layout.md).

    A named tuple, not an attrs class: one is made per entry read (half the cost)."""

    entry_id: str
    fields: Fields


def pack(*args: str | bytes | int) -> bytes:
    """One command in RESP, packed in C (ids as str: hiredis encodes them)."""
    return hiredis.pack_command(args)


def entries_of(reply: Any) -> tuple[list[Entry], list[str]]:
    """An XREADGROUP reply: the entries, and the ids of pending entries deleted from the stream
    (they come back with no fields). A nil reply (nothing new within the block) is empty.

    RESP2 replies ``[[stream, entries]]``, RESP3 ``{stream: entries}``."""
    out: list[Entry] = []
    gone: list[str] = []
    if not reply:
        return out, gone
    for items in reply.values() if isinstance(reply, dict) else (pair[1] for pair in reply):
        for entry_id, fields in items:
            if fields:
                pairs = iter(fields)  # name, value, name, value, ... (both protocols)
                out.append(Entry(entry_id.decode(), dict(zip(pairs, pairs))))
            else:
                gone.append(entry_id.decode())
    return out, gone


def pending_rows(page: list[Any]) -> dict[str, tuple[str, int, int]]:
    """An extended XPENDING reply (rows of id, consumer, idle ms, deliveries): id -> the rest."""
    return {entry_id.decode(): (consumer.decode(), idle, deliveries)
            for entry_id, consumer, idle, deliveries in page}
