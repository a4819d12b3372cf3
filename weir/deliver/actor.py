"""One partition's delivery: read through the consumer group, hand to the target, acknowledge.

A thin shell: what to dead-letter, when a file is due and whether a commit is safe are decided in
weir/deliver/decisions.py; the target decides how entries become durable (weir/deliver/target.py).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import attrs
import trio

from weir.actors.nurseries import open_unwrapping_nursery
from weir.actors.stopping import until_stopped
from weir.deliver.decisions import FailureMemory, parse_entry_id, safe_to_commit, triage, twin_alive
from weir.deliver.group import ConsumerGroup, Entry
from weir.deliver.settings import DeliverSettings
from weir.deliver.target import Prepared, Target
from weir.errors import Fatal
from weir.sinks.redis_sink import SinkUnavailable
from weir.supervision import Backoff

T = TypeVar("T")

log = logging.getLogger("weir.deliver")

_CLAIM_PAGES = 10  # XAUTOCLAIM pages per pass at most: new entries are not starved by a long backlog


class ConsumerInUse(Fatal):
    """Another live instance reads the group under this instance's consumer name: taking over its
    pending entries would write them twice."""


@attrs.define(eq=False)
class DeliveryStats:
    """Counters of one partition's delivery (cumulative over restarts of its actor).

    Attributes:
        delivered: entries acknowledged after the target made them durable.
        skipped: entries read again that the target already held (acknowledged, not written again).
        refused: refusals by the target (each delivery of an entry it refused counts).
        dead_lettered: entries moved to the delivery dead-letter stream.
        claimed: entries taken over from idle consumers (XAUTOCLAIM).
        given_back: entries the target could not take for now (a webhook endpoint down), left
            pending to be delivered again (each time counts).
        commits: units the target committed (Parquet: files).
        aborts: units dropped because their entries were no longer safely this consumer's.
        last_commit: wall-clock time (Unix seconds) of the last commit, None before the first.
    """

    delivered: int = 0
    skipped: int = 0
    refused: int = 0
    dead_lettered: int = 0
    claimed: int = 0
    given_back: int = 0
    commits: int = 0
    aborts: int = 0
    last_commit: float | None = None


@attrs.define(eq=False)
class PartitionDelivery:
    """The actor: ``run(stopping, task_status=...)`` is a supervised child."""

    name: str
    group: ConsumerGroup
    make_target: Callable[[], Target]
    settings: DeliverSettings
    start: str
    stats: DeliveryStats
    backoff: Backoff
    rng: random.Random
    failures: FailureMemory = attrs.field(factory=FailureMemory)
    held: set[str] = attrs.field(factory=set)  # offered to the target, not yet committed or dropped
    undecided: list[Prepared] = attrs.field(factory=list)  # prepared, neither committed nor aborted yet
    ahead: list[Entry] = attrs.field(factory=list)  # read ahead, not yet offered (see _read_ahead)
    # Entries offered together when the target raised: offered one at a time from then on (kept
    # across restarts of this actor), so the one that raises is found and dead-lettered alone.
    suspects: set[str] = attrs.field(factory=set)
    twin_checked: bool = False  # at the first run only: a later restart's predecessor is this process's own
    twin: ConsumerInUse | None = None  # found: every restart raises it again at once
    group_seen: bool = False  # the group existed for an earlier run of this actor

    async def run(self, stopping: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        target = self.make_target()
        self.held.clear()  # a new target holds nothing (a crashed one's files were dropped)
        self.ahead.clear()  # entries a crashed run read ahead are pending to this consumer: read again
        try:
            await self._ensure_group()
            await target.recover()
            task_status.started()
            async with until_stopped(stopping):
                await self._refuse_a_twin()
                await self._take_over_own_pending(target)
                await self._loop(target)
            # An ordered stop: what is buffered, and the batch read ahead, is committed and
            # acknowledged (the drain; a cancel meanwhile, the supervisor's after shutdown_grace or a
            # second signal, leaves it pending).
            entries, self.ahead = self.ahead, []
            await self._offer(target, entries)
            await self._commit(target, trio.current_time(), everything=True)
        finally:
            with trio.CancelScope(shield=True):
                for prepared in self.undecided:  # cancelled between prepare and commit: drop them
                    await target.abort(prepared)
                self.undecided.clear()
                await target.aclose()

    async def _loop(self, target: Target) -> None:
        """Offer new entries as they come, commit what is due, claim from idle consumers.

        New entries are read by a task of their own, one batch ahead: the next XREADGROUP is on
        its way while this batch becomes rows (measured: docs/performance.md, "Delivery").
        """
        s = self.settings
        send, receive = trio.open_memory_channel[list[Entry]](0)
        async with open_unwrapping_nursery() as nursery:
            nursery.start_soon(self._read_ahead, send)
            next_claim = trio.current_time()
            while True:
                now = trio.current_time()
                if now >= next_claim:
                    await self._claim_pass(target)
                    next_claim = now + s.claim_interval
                due = target.next_due()
                if due is not None and now >= due:
                    await self._commit(target, now)
                    due = target.next_due()
                entries: list[Entry] = []
                with trio.move_on_at(min(next_claim, due if due is not None else next_claim)):
                    entries = await receive.receive()
                    self.ahead = []  # received: offered next (a stop from here on cancels _offer itself)
                if entries:
                    await self._offer(target, entries)

    async def _read_ahead(self, send: trio.MemorySendChannel[list[Entry]]) -> None:
        """XREADGROUP ``>`` in a loop, each batch handed over once the loop wants it; while it
        waits it is ``self.ahead``, which an ordered stop still offers (the drain)."""
        s = self.settings
        while True:
            entries = await self._patiently(self.group.read_new, s.read_count, s.block_ms)
            if entries:
                self.ahead = entries
                await send.send(entries)

    async def _ensure_group(self) -> None:
        """The group, created at ``start`` for a new pipeline; one that vanished under this actor
        (deleted, Redis restarted without it) is created again at "0": from "$" the entries in its
        open files and all written since would never be read (the targets' own records, Parquet's
        committed files, JetStream's Msg-Id, a receiver's key, take the repeats)."""
        start = "0" if self.group_seen else self.start
        if await self._patiently(self.group.ensure_group, start) and self.group_seen:
            log.warning("%s: consumer group %r of %s was gone: created again, reading the stream from its start",
                        self.name, self.group.group, self.group.stream,
                        extra={"event": "deliver_group_recreated", "pipeline": self.name})
        self.group_seen = True

    async def _refuse_a_twin(self) -> None:
        """Before taking over this consumer name's pending entries: if another live instance
        reads under the same name (a fixed --consumer scaled to two replicas), both would write
        them. Checked once per process; the instance that starts second stops (Fatal)."""
        if self.twin is not None:
            raise self.twin
        if self.twin_checked:
            return
        before = await self._patiently(self.group.consumer_seen)
        if before is not None:  # the name was used before: by a dead predecessor, or a live twin
            wait = 2 * self.settings.block_ms / 1000 + 1
            started = trio.current_time()
            await trio.sleep(wait)
            after = await self._patiently(self.group.consumer_seen)
            if after is not None and twin_alive(idle_before_ms=before[1], idle_after_ms=after[1],
                                                waited_ms=(trio.current_time() - started) * 1000):
                self.twin = ConsumerInUse(
                    f"{self.name}: another live instance reads group {self.group.group!r} of {self.group.stream} as "
                    f"consumer {self.group.consumer!r} (it read while this one waited {wait:g}s): give each "
                    f"instance its own deliver.consumer (--consumer)")
                raise self.twin
        self.twin_checked = True

    async def _take_over_own_pending(self, target: Target) -> None:
        """Entries this consumer name had pending before the (re)start: delivered again."""
        after = "0"
        while True:
            entries, gone = await self._patiently(self.group.read_own_pending, after, self.settings.read_count)
            if gone:  # deleted from the stream while pending: nothing left to deliver
                await self._patiently(self.group.ack, gone)
            if not entries and not gone:
                return
            await self._redeliver(target, entries)
            after = max([entry.entry_id for entry in entries] + gone, key=parse_entry_id)

    async def _claim_pass(self, target: Target) -> None:
        cursor = "0-0"
        claimed = False
        for _ in range(_CLAIM_PAGES):
            cursor, entries, gone = await self._patiently(
                self.group.autoclaim, self.settings.claim_idle, cursor, self.settings.read_count)
            if gone:  # deleted from the stream while pending: nothing left to deliver
                await self._patiently(self.group.ack, gone)
            if entries:
                claimed = True
                self.stats.claimed += len(entries)
                log.info("%s: claimed %d entries idle for over %gs", self.name, len(entries), self.settings.claim_idle,
                         extra={"event": "deliver_claimed", "pipeline": self.name, "entries": len(entries)})
                await self._redeliver(target, entries)
            if cursor == "0-0":
                break
        if claimed:  # their consumer may have died with a file open
            await target.recover()

    async def _redeliver(self, target: Target, entries: Sequence[Entry]) -> None:
        """Entries delivered before: dead-letter those tried too often, skip those already durable."""
        if not entries:
            return
        counts = await self._patiently(self.group.deliveries, [entry.entry_id for entry in entries])
        decision = triage(counts, max_deliveries=self.settings.max_deliveries, reasons=self.failures, held=self.held)
        by_id = {entry.entry_id: entry for entry in entries}
        deliveries = {item.entry_id: item.deliveries for item in counts}
        for entry_id, reason in decision.dead:
            await self._patiently(self.group.dead_letter, by_id[entry_id], reason, deliveries[entry_id])
            self.stats.dead_lettered += 1
            self.failures.forget([entry_id])
            self.suspects.discard(entry_id)
            log.warning("%s: entry %s dead-lettered: %s", self.name, entry_id, reason,
                        extra={"event": "deliver_dead_letter", "pipeline": self.name, "entry_id": entry_id, "reason": reason})
        await self._offer(target, [by_id[entry_id] for entry_id in decision.deliver])

    async def _offer(self, target: Target, entries: Sequence[Entry]) -> None:
        """Hand entries to the target, except those it already holds durably: acknowledged at once.

        New entries are looked up too, not only those read again: if Redis lost the group's state
        (a restart before its AOF had the last reads), entries committed earlier come back as new.
        """
        # A batch read ahead may meanwhile have come back through a claim pass (its entries
        # looked idle during a Redis stall) and be held already: offered once, not twice.
        entries = [entry for entry in entries if entry.entry_id not in self.held]
        if not entries:
            return
        durable = await target.already_delivered(entries)
        if durable:
            await self._patiently(self.group.ack, sorted(durable, key=parse_entry_id))
            self.stats.skipped += len(durable)
            entries = [entry for entry in entries if entry.entry_id not in durable]
        refused = await self._offer_isolating(target, entries)
        self._release_given_back(target)
        for entry_id, reason in refused.items():
            self.failures.remember(entry_id, reason)
            log.warning("%s: target refused entry %s: %s", self.name, entry_id, reason,
                        extra={"event": "deliver_refused", "pipeline": self.name, "entry_id": entry_id, "reason": reason})
        self.stats.refused += len(refused)
        # What is due is acknowledged now, not after the next offer: a claim pass offers page after
        # page (a webhook's offer may take claim_idle / 3 each), and entries left waiting for the
        # loop's own commit would idle past the safe margin and be dropped, again and again.
        due = target.next_due()
        if due is not None and trio.current_time() >= due:
            await self._commit(target, trio.current_time())

    async def _offer_isolating(self, target: Target, entries: Sequence[Entry]) -> dict[str, str]:
        """``target.offer``, suspects one at a time after the others are committed (see
        ``suspects``); the entries the target took are held."""
        alone = [entry for entry in entries if entry.entry_id in self.suspects]
        together = [entry for entry in entries if entry.entry_id not in self.suspects]
        refused = await self._offer_or_suspect(target, together) if together else {}
        if alone:
            await self._commit(target, trio.current_time(), everything=True)  # durable before a suspect's turn
        for entry in alone:
            refused |= await self._offer_or_suspect(target, [entry])
            self.suspects.discard(entry.entry_id)  # it went through alone
        return refused

    async def _offer_or_suspect(self, target: Target, batch: list[Entry]) -> dict[str, str]:
        """An exception from the target (a bug some entry triggers) marks the batch as suspects, or
        is remembered as the refusal of an entry offered alone (dead-lettered then after
        max_deliveries, with that reason), and is re-raised: the actor restarts on a fresh target.
        Without this every restart re-read the entry's whole batch, and its neighbours were
        dead-lettered with it."""
        try:
            refused = await target.offer(batch)
        except Exception as exc:
            if len(batch) == 1:
                self.failures.remember(batch[0].entry_id, f"crashed the deliverer ({type(exc).__name__})")
            self.suspects.update(entry.entry_id for entry in batch)
            raise
        self.held.update(entry.entry_id for entry in batch if entry.entry_id not in refused)
        return refused

    def _release_given_back(self, target: Target) -> None:
        """Entries the target gave back (now, or from an earlier offer: a Parquet file that could
        not be written) are no longer held: they stay pending and come back through a claim pass."""
        given_back = target.given_back()
        self.held.difference_update(given_back)
        self.stats.given_back += len(given_back)

    async def _commit(self, target: Target, now: float, *, everything: bool = False) -> None:
        self.undecided += await target.prepare(now, everything=everything)  # with any a cancel left undecided
        self._release_given_back(target)
        while self.undecided:
            prepared = self.undecided[0]
            self.held.difference_update(prepared.entry_ids)  # committed or dropped below: no longer held
            safe = await self._still_ours(prepared)
            self.undecided.pop(0)  # from here on it is committed or aborted (neither can be cancelled half-way)
            if safe:
                await target.commit(prepared)
                await self._patiently(self.group.ack, list(prepared.entry_ids))
                self.stats.commits += 1
                self.stats.delivered += len(prepared.entry_ids)
                self.stats.last_commit = time.time()
            else:
                await target.abort(prepared)
                self.stats.aborts += 1
                log.warning("%s: dropped a prepared unit of %d entries: some are no longer safely this consumer's "
                            "(they are delivered again)", self.name, len(prepared.entry_ids),
                            extra={"event": "deliver_aborted", "pipeline": self.name, "entries": len(prepared.entry_ids)})

    async def _still_ours(self, prepared: Prepared) -> bool:
        ordered = sorted(prepared.entry_ids, key=parse_entry_id)
        pending = await self._patiently(self.group.pending_of, ordered[0], ordered[-1], mine=True)
        idle = [pending[entry_id][1] if entry_id in pending else None for entry_id in ordered]
        return safe_to_commit(idle, claim_idle=self.settings.claim_idle)

    async def _patiently(self, call: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``call`` retried with backoff while Redis is unavailable (every call here is safe to
        repeat: a read whose reply was lost leaves its entries pending, to be claimed later)."""
        attempt = 0
        while True:
            try:
                return await call(*args, **kwargs)
            except SinkUnavailable as exc:
                if attempt == 0:
                    log.warning("%s: redis unavailable (%s); retrying", self.name, exc,
                                extra={"event": "deliver_redis_unavailable", "pipeline": self.name})
                await trio.sleep(self.backoff.delay(attempt, self.rng))
                attempt += 1
