"""The batch actor: groups chunks into batches for one atomic write each.

A batch is flushed when it reaches ``max_events`` or ``max_bytes``, or when its oldest chunk is
``max_age`` seconds old, whichever comes first. With ``eager`` (the default) a batch is also handed
over as soon as the persist actor is idle: at low rates every event is written at once (low latency),
and at high rates events pile up while a write is in flight, so batches grow exactly as large as the
sink is slow (group commit).
"""

from __future__ import annotations

import math

import attrs
import trio

from weir.actors.inbox import open_inbox
from weir.events import Chunk


@attrs.frozen(kw_only=True)
class BatchPolicy:
    """When a batch is flushed. Validated by the config loader."""

    max_events: int = 500
    max_bytes: int = 1 << 20
    max_age: float = 0.2
    eager: bool = True


class _Pending:
    """Chunks collected for the next batch."""

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.events = 0
        self.bytes = 0
        self.since = math.inf

    def add(self, chunk: Chunk) -> None:
        if not self.chunks:
            self.since = trio.current_time()
        self.chunks.append(chunk)
        self.events += len(chunk.events)
        self.bytes += sum(len(event.payload) for event in chunk.events)

    def take(self) -> list[Chunk]:
        chunks = self.chunks
        self.__init__()
        return chunks


async def run_batch(
    stopping: trio.Event,
    *,
    receive: trio.MemoryReceiveChannel[Chunk],
    send: trio.MemorySendChannel[list[Chunk]],
    policy: BatchPolicy,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Collect chunks from ``receive`` and send lists of chunks to ``send`` (the persist actor).

    Once stopped, what is queued is taken, the last batch is flushed, and the actor returns.
    """
    pending = _Pending()
    async with open_inbox(receive, stopping) as inbox:
        task_status.started()
        while True:
            if pending.chunks:
                full = pending.events >= policy.max_events or pending.bytes >= policy.max_bytes
                # The same sum as the deadline below: ``now - since >= max_age`` can stay False at
                # the deadline itself (float rounding), and the loop then spun without yielding time.
                due = trio.current_time() >= pending.since + policy.max_age
                if full or due:
                    await send.send(pending.take())
                    continue
                if policy.eager:
                    try:
                        send.send_nowait(pending.chunks)
                    except trio.WouldBlock:
                        pass
                    else:
                        pending.take()
                        continue
                deadline = pending.since + policy.max_age
            else:
                deadline = math.inf
            with trio.move_on_at(deadline) as timer:
                chunk = await inbox.get()
            if timer.cancelled_caught:
                continue  # the age limit was reached
            if chunk is None:
                break
            pending.add(chunk)
        if pending.chunks:
            await send.send(pending.take())
