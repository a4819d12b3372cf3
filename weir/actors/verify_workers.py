"""Farcaster message verification in worker processes (``farcaster.verify_workers``).

Verifying a message (BLAKE3 of its data, Ed25519 of the hash) costs ~55-70 µs, several times
everything else weir does with an event (docs/performance.md). In threads it does not scale:
libsodium releases the GIL, but the Python half of the work (finding the messages in the event)
holds it, and the two halves convoy on the GIL (measured: 2 threads slower than 1). Worker
processes have their own GIL: the reader's process pays ~5 µs per event to hand a batch over and
the verification runs on the other cores.

The workers belong to trio-parallel's worker context opened by the shard's connection actor, so
they live and die with it under the same supervision. A batch too small to be worth the hand-over
(live traffic, a few events at a time) is verified inline.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from weir.codecs.farcaster_validity import hub_event_invalidities

log = logging.getLogger("weir.actors.verify_workers")

Item = tuple[bytes, int, int, bytes]
"""An event to verify: its bytes, and the fid, message type and hash it is routed by."""

# Below this many messages a batch is verified inline: handing it to a process costs ~0.3-1 ms.
INLINE_BELOW = 16
# Each worker gets at least this many messages of a batch (fewer, larger hand-overs).
MIN_PER_WORKER = 64


def split_evenly(items: list[Any], parts: int) -> list[list[Any]]:
    """``items`` cut into ``parts`` contiguous slices of near-equal length (none empty), in order."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    slices, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        slices.append(items[start:end])
        start = end
    return slices


@attrs.define(eq=False)
class ProcessVerifier:
    """Verdicts (``hub_event_invalidity``) for a batch of (event bytes, fid, message type, message
    hash), in order.

    If the worker processes cannot run (a program embedding weir whose main module cannot be
    imported again, a worker killed), it says so once and verifies inline from then on: the
    verdicts are the same, only slower.
    """

    context: Any  # trio_parallel.WorkerContext
    workers: int
    offloaded: int = 0  # messages verified in worker processes
    broken: str | None = None  # why the workers were given up

    async def start_workers(self) -> None:
        """Have every worker process running (an empty batch each), or note why they cannot."""
        await self._offload([[] for _ in range(self.workers)])

    async def verdicts(self, items: list[Item]) -> list[str | None]:
        if len(items) < INLINE_BELOW or self.broken is not None:
            return hub_event_invalidities(items)
        parts = split_evenly(items, min(self.workers, max(1, len(items) // MIN_PER_WORKER)))
        results = await self._offload(parts)
        if results is None:
            return hub_event_invalidities(items)
        self.offloaded += len(items)
        return [verdict for part in results for verdict in part]

    async def _offload(self, parts: list[list[Item]]) -> list[list[str | None]] | None:
        """The verdicts of each part, each part in a worker; None once the workers are given up."""
        import trio_parallel

        results: list[list[str | None]] = [[] for _ in parts]

        async def verify(index: int, part: list[Item]) -> None:
            results[index] = await self.context.run_sync(hub_event_invalidities, part)

        try:
            async with trio.open_nursery() as nursery:
                for index, part in enumerate(parts):
                    nursery.start_soon(verify, index, part)
        except BaseExceptionGroup as group:
            broken, rest = group.split(trio_parallel.BrokenWorkerError)
            if rest is not None or broken is None:
                raise
            if self.broken is None:
                self.broken = str(broken.exceptions[0])
                log.warning("verification in worker processes failed (%s); verifying in the reader from now on",
                            self.broken, extra={"event": "verify_workers_broken", "source": "farcaster", "error": self.broken})
            return None
        return results


@asynccontextmanager
async def open_process_verifier(workers: int) -> AsyncIterator[ProcessVerifier]:
    """Worker processes for verification, stopped on exit.

    They are started at once, in the background: starting one takes ~0.3-1 s, which the first
    batch would otherwise wait for while the stream behind it stalls.
    """
    import trio_parallel

    async with trio_parallel.open_worker_context() as context:
        verifier = ProcessVerifier(context=context, workers=workers)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(verifier.start_workers)
            yield verifier
            nursery.cancel_scope.cancel()
