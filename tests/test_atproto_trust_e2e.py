"""Issue 10, AT Protocol rows, end to end over real sockets (real redis-server, the simulator's real
WebSocket): ~400 valid events with one bad item among them (a seq of 2^60, a frame over 10 MB, a
commit with too many ops, a Jetstream time_us far in the future, a Jetstream message over the
limit). Every valid event is persisted once, the bad item is in the dead-letter stream with its
reason, the connection is never closed for it (no reconnect, no restart), and the cursor never
stands at a bogus position."""

from __future__ import annotations

import time

import pytest

from weir.sim.atproto_data import (
    AtprotoSimConfig,
    expected_records,
    forged_seq_frame,
    forged_time_message,
    oversized_frame,
    oversized_message,
    too_many_ops_frame,
)
from weir.sinks.keys import partition_keys

from helpers import running_service, wait_for
from test_atproto_e2e import PARTITION, TIMEOUT, assert_persisted, at_config, atproto_sim, last_position, logged, reached
from test_observability import ready, scrape, value

pytestmark = pytest.mark.integration

KEYS = partition_keys("atproto", PARTITION)
BOGUS_SEQ = 1 << 60
TOTAL = 400


def free_slot(sim) -> int:
    """A commit in the middle whose next seq leaves one free (the simulator's gaps are 1 or 2)."""
    return next(i for i in range(TOTAL // 2, TOTAL - 1)
                if sim.events[i].kind == "commit" and sim.seqs[i + 1] - sim.seqs[i] == 2)


async def run_to_the_end(redis_url: str, url: str, sim, mode: str, **overrides: str):
    async with running_service(at_config(redis_url, url, atproto__mode=mode, **overrides)) as (service, _):
        await wait_for(lambda: reached(service, last_position(sim, mode)), timeout=TIMEOUT, what="the cursor to reach the end")
        stats = service.partitions[0].source
        assert service.root.statistics().escalations == 0
        metrics = await scrape(service.observability.url)
    return stats, metrics


@pytest.mark.parametrize("fault", ["seq 2^60", "frame over 10 MB", "too many ops"])
async def test_one_bad_firehose_frame_among_400(redis_server, redis_client, caplog, fault):
    async with atproto_sim(AtprotoSimConfig(seed=31, total=TOTAL)) as (sim, url):
        k = free_slot(sim)
        event, free = sim.events[k], sim.seqs[k] + 1
        if fault == "seq 2^60":
            frame, position, reason = forged_seq_frame(event, BOGUS_SEQ), None, "implausible seq 1152921504606846976"
        elif fault == "frame over 10 MB":
            frame = oversized_frame(sim.events[k], 12_000_000)
            frame = forged_seq_frame_of(frame, free)
            position, reason = free, "bytes exceeds the 5000000-byte limit (atproto.max_frame_bytes); its first 1024 bytes kept"
        else:
            frame, position, reason = too_many_ops_frame(forged_event(event, free), 201), free, "201 ops exceed the limit of 200"
        sim.inject(k, frame=frame)
        expected, _ = expected_records(sim.events)
        stats, metrics = await run_to_the_end(redis_server.url, url, sim, "firehose")
    assert (stats.connects, stats.reconnects, stats.dead_letters) == (1, 0, 1)
    await assert_persisted(redis_client, expected, [position], reason=reason.encode())
    assert int(await redis_client("HGET", KEYS.cursor, "position")) == sim.seqs[-1]
    (record,) = logged(caplog, "dead_letter")
    assert record.position == position and reason in record.reason
    labels = {"source": "atproto", "partition": PARTITION}
    family = "weir_source_implausible_positions_total" if fault == "seq 2^60" else "weir_source_oversized_total"
    assert value(metrics, family, **labels) == 1


def forged_event(event, seq: int):
    import attrs

    frame = forged_seq_frame(event, seq)
    return attrs.evolve(event, frame=frame, body=frame[len(event.frame) - len(event.body):], seq=seq)


def forged_seq_frame_of(frame: bytes, seq: int) -> bytes:
    from weir.codecs import atproto_cbor as cbor

    header, offset = cbor.decode_prefix(frame, 0)
    return cbor.encode(header) + cbor.encode({**cbor.decode(frame[offset:]), "seq": seq})


@pytest.mark.parametrize("fault", ["time_us far in the future", "message over the limit"])
@pytest.mark.parametrize("compress", [False, True])
async def test_one_bad_jetstream_message_among_400(redis_server, redis_client, caplog, fault, compress, tmp_path):
    async with atproto_sim(AtprotoSimConfig(seed=32, total=TOTAL)) as (sim, url):
        k = len(sim.js_messages) // 2
        time_us, message = sim.js_messages[k]
        if fault == "time_us far in the future":
            future = int(time.time() * 1e6) + 10**13  # ~4 months ahead
            bad, position, reason = forged_time_message(message, future), None, f"implausible time_us {future}"
        else:
            bad = forged_time_message(oversized_message(message, 6_000_000), time_us + 1)
            position, reason = time_us + 1, "5000000-byte limit (atproto.max_frame_bytes); its first"
        sim.inject(k, message=bad)
        expected, _ = expected_records(sim.events, mode="jetstream")
        extra = {}
        if compress:
            extra = {"atproto__compress": "true", "atproto__zstd_dictionary": sim.dictionary_url, "redis__data_dir": str(tmp_path)}
        stats, _ = await run_to_the_end(redis_server.url, url, sim, "jetstream", **extra)
    assert (stats.connects, stats.reconnects, stats.dead_letters) == (1, 0, 1)
    await assert_persisted(redis_client, expected, [position], reason=reason.encode())
    assert int(await redis_client("HGET", KEYS.cursor, "position")) == sim.js_times[-1]
    (record,) = logged(caplog, "dead_letter")
    assert record.position == position and reason in record.reason


async def test_a_relay_that_keeps_sending_bogus_seqs_is_refused_and_reported(redis_server, redis_client, caplog):
    """atproto.max_bad_positions bogus seqs in a row: each dead-lettered, the connection dropped and
    reported (log event relay_refused, weir_source_refusals_total, /readyz detail), reconnected with
    backoff; once the relay stops sending them every valid event is persisted."""
    async with atproto_sim(AtprotoSimConfig(seed=33, total=TOTAL)) as (sim, url):
        k = TOTAL // 2
        for n in range(3):
            sim.inject(k, frame=forged_seq_frame(sim.events[k], BOGUS_SEQ + n))
        expected, _ = expected_records(sim.events)
        config = at_config(redis_server.url, url, atproto__max_bad_positions="3", supervision__backoff_initial="0.5",
                           supervision__backoff_max="0.5")
        async with running_service(config) as (service, _):
            stats = service.partitions[0].source
            await wait_for(lambda: stats.refusals >= 1, timeout=TIMEOUT, what="the relay to be refused")
            metrics = await scrape(service.observability.url)
            status, body = await ready(service.observability.url)
            sim.injected_frames.clear()  # the relay mends its ways
            await wait_for(lambda: reached(service, sim.seqs[-1]), timeout=TIMEOUT, what="every valid event")
            assert service.root.statistics().escalations == 0
    assert value(metrics, "weir_source_refusals_total", source="atproto", partition=PARTITION) >= 1
    assert status == 503 and "3 implausible positions in a row" in str(body)
    refused = logged(caplog, "relay_refused")
    assert refused and "implausible seq" in refused[0].reason
    await assert_persisted(redis_client, expected, [None] * stats.implausible_positions, reason=b"implausible seq")
    assert int(await redis_client("HGET", KEYS.cursor, "position")) == sim.seqs[-1]
