"""The filter actor: keeps the events a predicate accepts, evaluated on scanned keys only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from weir.actors.inbox import open_inbox
from weir.events import Chunk, Event

Predicate = Callable[[Event], bool]


def all_of(*predicates: Predicate | None) -> Predicate | None:
    """One predicate that keeps an event only if every given one does, asked in order (the first
    that refuses ends it: a user's predicate after the configured ones sees only what they kept).
    ``None`` entries are skipped; ``None`` if none is left (the filter actor then keeps all)."""
    chain = tuple(predicate for predicate in predicates if predicate is not None)
    if not chain:
        return None
    if len(chain) == 1:
        return chain[0]

    def keep(event: Event) -> bool:
        return all(predicate(event) for predicate in chain)

    return keep


async def run_filter(
    stopping: trio.Event,
    *,
    receive: trio.MemoryReceiveChannel[Chunk],
    send: trio.MemorySendChannel[Chunk],
    predicate: Predicate | None,
    on_filtered: Callable[[str, int, int], None] | None = None,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Forward every chunk with only the accepted events, until stopped and drained.

    Chunks are forwarded even when nothing in them passes, because they carry ``through``: the
    cursor must move past filtered-out events, or a restart would read them all again.

    Args:
        on_filtered: called with (partition, kept, dropped) for every chunk (also without a
            predicate), for metrics.
    """
    async with open_inbox(receive, stopping) as inbox:
        task_status.started()
        while (chunk := await inbox.get()) is not None:
            dropped = 0
            if predicate is not None and chunk.events:
                kept = [event for event in chunk.events if predicate(event)]
                dropped = len(chunk.events) - len(kept)
                if dropped:
                    chunk = chunk.with_events(kept)
            if on_filtered is not None:
                on_filtered(chunk.partition, len(chunk.events), dropped)
            await send.send(chunk)
