"""Farcaster verification handed to worker processes (farcaster.verify_workers).

The reader's deferred path (read without verifying, then settle with verdicts computed elsewhere)
must give what inline verification gives, however a stream is cut into reads; real worker
processes must give the inline verdicts; and workers that cannot run must not stop verification.
"""

from __future__ import annotations

import os
from functools import cache

import pytest
import trio
import trio_parallel
from hypothesis import given, settings
from hypothesis import strategies as st

from weir.actors.farcaster import ShardReader, ShardStats
from weir.actors.verify_workers import INLINE_BELOW, ProcessVerifier, open_process_verifier, split_evenly
from weir.codecs.farcaster_gaps import GapDetector
from weir.codecs.farcaster_keys import MERGE_MESSAGE, scan_hub_event
from weir.codecs.farcaster_validity import hub_event_invalidities, hub_event_invalidity
from weir.sim.farcaster_data import SnapchainSimConfig, generate_offered
from weir.sim.farcaster_faults import alter, forge

TOTAL = 240
FORGED = 6
ALTERED = 2


@cache
def payloads() -> tuple[bytes, ...]:
    """A shard's events with forged signatures and altered messages spread among them."""
    config = SnapchainSimConfig(shards=1, seed=31, rate=0, history=TOTAL, total=TOTAL)
    events = [p for _, p in generate_offered(config, 1, TOTAL)]
    merges = [i for i, p in enumerate(events) if scan_hub_event(p).event_type == MERGE_MESSAGE]
    chosen = merges[:: len(merges) // (FORGED + ALTERED)][: FORGED + ALTERED]
    for n, i in enumerate(chosen):
        events[i] = forge(events[i]) if n < FORGED else alter(events[i])
    return tuple(events)


def reader(*, defer: bool) -> ShardReader:
    return ShardReader(shard=1, partition="1", detector=GapDetector(), stats=ShardStats(), defer_verify=defer)


def outcome(chunks, stats: ShardStats):
    events = [(e.position, e.payload) for c in chunks if c for e in c.events]
    dead = sorted((d.position, d.reason) for c in chunks if c for d in c.dead)
    return events, dead, stats.invalid_messages, stats.dead_letters


@given(st.lists(st.integers(min_value=1, max_value=80), min_size=1, max_size=12))
@settings(max_examples=25, deadline=None)
def test_settled_reads_equal_inline_verification_however_the_stream_is_cut(sizes):
    items = list(payloads())
    cuts, start = [], 0
    for size in sizes * (TOTAL // sum(sizes) + 1):
        if start >= len(items):
            break
        cuts.append(items[start : start + size])
        start += size
    inline, deferred = reader(defer=False), reader(defer=True)
    inline_chunks = [inline.read(cut, 0.0) for cut in cuts]
    deferred_chunks = []
    for cut in cuts:
        chunk = deferred.read(cut, 0.0)
        pending = [(event.payload, keys.fid, keys.msg_type, keys.msg_hash) for event, keys in deferred.unverified]
        deferred_chunks.append(deferred.settle(chunk, hub_event_invalidities(pending)))
    assert outcome(deferred_chunks, deferred.stats) == outcome(inline_chunks, inline.stats)
    assert inline.stats.invalid_messages == FORGED + ALTERED  # the check can fail: they are there
    assert deferred.last_id == inline.last_id


def test_settle_refuses_verdicts_that_do_not_match_the_events_listed():
    r = reader(defer=True)
    chunk = r.read(list(payloads()[:20]), 0.0)
    assert len(r.unverified) > 1
    with pytest.raises(ValueError, match="verdicts for"):
        r.settle(chunk, [None])


@given(st.lists(st.integers(), max_size=300), st.integers(min_value=1, max_value=9))
def test_split_evenly_keeps_order_and_balances(items, parts):
    slices = split_evenly(items, parts)
    assert [x for s in slices for x in s] == items
    if items:
        assert len(slices) == min(parts, len(items)) and all(slices)
        assert max(map(len, slices)) - min(map(len, slices)) <= 1


def items_to_verify() -> list[tuple[bytes, int, int, bytes]]:
    keys = [scan_hub_event(p) for p in payloads()]
    return [(p, k.fid, k.msg_type, k.msg_hash) for p, k in zip(payloads(), keys)]


async def test_worker_processes_give_the_inline_verdicts():
    items = items_to_verify()
    async with open_process_verifier(2) as verifier:
        verdicts = await verifier.verdicts(items)
        small = await verifier.verdicts(items[: INLINE_BELOW - 1])
    assert verdicts == [hub_event_invalidity(p, scan_hub_event(p)) for p, *_ in items]
    assert sum(v is not None for v in verdicts) == FORGED + ALTERED
    assert small == verdicts[: INLINE_BELOW - 1]
    assert verifier.offloaded == len(items) and verifier.broken is None  # the small batch stayed inline


def _die_at_start() -> None:
    os._exit(3)


async def test_workers_that_cannot_start_leave_verification_to_the_reader():
    items = items_to_verify()
    async with trio_parallel.open_worker_context(init=_die_at_start) as context:
        verifier = ProcessVerifier(context=context, workers=2)
        with trio.fail_after(30):
            first = await verifier.verdicts(items)
            second = await verifier.verdicts(items)
    assert first == second == [hub_event_invalidity(p, scan_hub_event(p)) for p, *_ in items]
    assert verifier.broken is not None and verifier.offloaded == 0
