"""The service (``weir.app.serve``) ingesting the simulated AT Protocol relay / Jetstream into a real redis-server.

The simulator serves real frames (DAG-CBOR, CAR, CIDs that match) over real WebSockets; what it
offered is recomputed from its history (``expected_records``) and compared with what weir wrote:
every record once, in order, byte-identical, dead letters where the data was bad, the cursor at the end.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio

from weir.codecs import atproto_cbor as cbor
from weir.config import load_config
from weir.sim.atproto import AtprotoSim
from weir.sim.atproto_data import AtprotoSimConfig, ExpectedEntry, expected_records
from weir.sinks.keys import partition_keys

from helpers import running_service, wait_for

pytestmark = pytest.mark.integration

PARTITION = "sim"
KEYS = partition_keys("atproto", PARTITION)
TIMEOUT = 20.0


@asynccontextmanager
async def atproto_sim(config: AtprotoSimConfig) -> AsyncIterator[tuple[AtprotoSim, str]]:
    sim = AtprotoSim(config)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sim.serve)
        yield sim, f"ws://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


def at_config(redis_url: str, url: str, **overrides: str):
    values = {
        "redis.url": redis_url,
        "redis.socket_timeout": "1",
        "farcaster.enabled": "false",
        "atproto.enabled": "true",
        "atproto.url": url,
        "atproto.jetstream_url": url,
        "atproto.partition": PARTITION,
        "atproto.start": "oldest",
        "atproto.idle_timeout": "5",
        "atproto.connect_timeout": "2",
        "supervision.backoff_initial": "0.01",
        "supervision.backoff_max": "0.1",
        "supervision.breaker_reset": "0.1",
        "supervision.max_restarts": "50",
        "log_level": "ERROR",
    }
    values.update({key.replace("__", "."): value for key, value in overrides.items()})
    return load_config(environ={}, overrides=values)


def last_position(sim: AtprotoSim, mode: str) -> int:
    return sim.events[-1].seq if mode == "firehose" else sim.js_times[-1]


def reached(service, position: int) -> bool:
    return service.partitions[0].sink.cursor == position


async def assert_persisted(redis_client, expected: list[ExpectedEntry], dead: list[int], *,
                           reason: bytes = b"does not match its CID") -> None:
    entries = await redis_client("XRANGE", KEYS.events, "-", "+")
    got_ids = [entry_id for entry_id, _ in entries]
    want_ids = [entry.stream_id for entry in expected]
    if got_ids != want_ids:
        got, want = set(got_ids), set(want_ids)
        raise AssertionError(f"{len(got_ids)} entries, expected {len(want_ids)}; duplicates {len(got_ids) - len(got)}, "
                             f"missing {sorted(want - got)[:5]}, unexpected {sorted(got - want)[:5]}")
    for (entry_id, fields), entry in zip(entries, expected):
        assert fields[b"kind"] == entry.kind.encode(), entry_id
        assert fields[b"data"] == entry.data, f"data of {entry_id!r} differs from what was offered"
        for name, value in entry.fields.items():
            assert fields[name.encode()] == str(value).encode(), f"{entry_id!r}: field {name}"
        if "cid" in entry.fields:
            assert fields[b"key"] == entry.fields["cid"].encode()
    dead_entries = await redis_client("XRANGE", KEYS.dead, "-", "+")
    assert sorted(int(fields[b"position"]) for _, fields in dead_entries) == sorted(dead)
    for _, fields in dead_entries:
        assert reason in fields[b"reason"]


@pytest.mark.parametrize("mode", ["firehose", "jetstream"])
async def test_every_record_once_with_dead_letters(redis_server, redis_client, mode):
    sim_config = AtprotoSimConfig(seed=3, total=600, corrupt_every=40)
    extra = {"atproto__compress": "true"} if mode == "jetstream" else {}
    async with atproto_sim(sim_config) as (sim, url):
        expected, dead = expected_records(sim.events, mode=mode)
        async with running_service(at_config(redis_server.url, url, atproto__mode=mode, **extra)) as (service, _):
            await wait_for(lambda: reached(service, last_position(sim, mode)), timeout=TIMEOUT, what="the cursor to reach the end")
            stats = service.partitions[0].source
    assert len(dead) >= 5 and len(expected) > 600
    await assert_persisted(redis_client, expected, dead)
    assert int(await redis_client("HGET", KEYS.cursor, "position")) == last_position(sim, mode)
    assert stats.dead_letters == len(dead) and stats.stale_revs == 0


async def test_firehose_and_jetstream_store_the_same_records(redis_server, redis_client):
    """Switching atproto.mode changes positions, not the data: record bytes and fields agree."""
    sim_config = AtprotoSimConfig(seed=4, total=200)
    async with atproto_sim(sim_config) as (sim, url):
        got: dict[str, list[tuple[bytes, bytes, bytes]]] = {}
        for mode in ("firehose", "jetstream"):
            partition = f"{mode}-same"
            config = at_config(redis_server.url, url, atproto__mode=mode, atproto__partition=partition, atproto__kinds="commit")
            async with running_service(config) as (service, _):
                await wait_for(lambda: reached(service, last_position(sim, mode)), timeout=TIMEOUT, what=f"{mode} to finish")
            entries = await redis_client("XRANGE", partition_keys("atproto", partition).events, "-", "+")
            got[mode] = [(f[b"data"], f[b"cid"] if b"cid" in f else b"", f[b"did"] + f[b"collection"] + f[b"rkey"] + f[b"action"] + f[b"rev"])
                         for _, f in entries]
    assert len(got["firehose"]) > 200
    assert got["firehose"] == got["jetstream"]


@pytest.mark.parametrize("mode", ["firehose", "jetstream"])
@pytest.mark.parametrize("how", ["drain", "cancel"])
async def test_restart_mid_stream_delivers_each_record_once(redis_server, redis_client, how, mode):
    """Stop a third of the way in, start again: it resumes from the persisted cursor (a seq, or
    Jetstream's time_us), skips the event at the cursor that the server sends again, and persists
    every record exactly once."""
    sim_config = AtprotoSimConfig(seed=5, total=1500, rate=3000)
    async with atproto_sim(sim_config) as (sim, url):
        expected, _ = expected_records(sim.events, mode=mode)
        config = at_config(redis_server.url, url, atproto__mode=mode)
        positions = sim.seqs if mode == "firehose" else sim.js_times
        middle, last = positions[len(positions) // 3], last_position(sim, mode)
        with trio.CancelScope() as scope:
            async with running_service(config) as (service, _):
                await wait_for(lambda: (service.partitions[0].sink.cursor or 0) >= middle, timeout=TIMEOUT, what="a third")
                if how == "cancel":
                    scope.cancel()  # no drain: whatever was in flight is lost in memory only
        first = int(await redis_client("HGET", KEYS.cursor, "position"))
        assert middle <= first < last
        async with running_service(config) as (service, _):
            await wait_for(lambda: reached(service, last), timeout=TIMEOUT, what="the end after the restart")
            # the server replays inclusively: the event at the cursor came again and was skipped
            assert service.partitions[0].source.duplicates_skipped >= 1
    await assert_persisted(redis_client, expected, [])


async def test_a_run_of_max_bad_frames_reconnects_and_a_shorter_run_does_not(redis_server, redis_client, caplog):
    """``atproto.max_bad_frames`` = N: N-1 malformed frames in a row, then a good one, then N-1 more
    keep the connection (the good frame ends the run); N in a row reopen it (TooManyBadFrames),
    resuming after the last bad frame. Every bad frame is one dead letter, every good record is
    persisted once. One message per read (read_batch 1), so "in a row" is exact."""
    n = 3
    sim_config = AtprotoSimConfig(seed=10, total=60)
    async with atproto_sim(sim_config) as (sim, url):
        bad_at = [10, 11, 13, 14, 30, 31, 32]  # N-1, good, N-1 (no reconnect) ... N (reconnect)
        original = list(sim.events)
        for index in bad_at:  # a frame whose seq reads but whose repo is no DID: a FrameError at that seq
            event = sim.events[index]
            sim.events[index] = attrs.evolve(event, frame=cbor.encode({"t": "#commit", "op": 1}) + cbor.encode({"seq": event.seq, "repo": "nope"}))
        bad_seqs = [original[index].seq for index in bad_at]
        expected, _ = expected_records([event for event in original if event.seq not in bad_seqs])
        config = at_config(redis_server.url, url, atproto__max_bad_frames=str(n), atproto__read_batch="1")
        caplog.set_level(logging.WARNING, logger="weir.actors.atproto")
        async with running_service(config) as (service, _):
            stats = service.partitions[0].source
            await wait_for(lambda: reached(service, sim.events[-1].seq), timeout=TIMEOUT, what="the end")
            assert (stats.connects, stats.reconnects) == (2, 1)
            assert stats.dead_letters == len(bad_at)
            assert stats.duplicates_skipped == 1  # the last bad frame, sent again at the resume cursor
    lost = [r.getMessage() for r in caplog.records if "connection to" in r.getMessage()]
    assert len(lost) == 1 and f"TooManyBadFrames: {n} malformed frames in a row" in lost[0]
    assert "reconnecting in" in lost[0] and f"after {bad_seqs[-1]}" in lost[0]
    await assert_persisted(redis_client, expected, bad_seqs, reason=b"no valid DID")  # each once: the replayed one is no new dead letter


async def test_collection_filter_keeps_exactly_the_matching_ops(redis_server, redis_client):
    sim_config = AtprotoSimConfig(seed=6, total=500, corrupt_every=30)
    collections = ("app.bsky.graph.follow", "app.bsky.actor.*")
    async with atproto_sim(sim_config) as (sim, url):
        expected, dead = expected_records(sim.events, collections=collections)
        config = at_config(redis_server.url, url, atproto__collections=",".join(collections), atproto__kinds="commit")
        async with running_service(config) as (service, _):
            await wait_for(lambda: reached(service, sim.events[-1].seq), timeout=TIMEOUT, what="the cursor to pass everything")
            assert service.partitions[0].source.filtered > 0
    everything = [entry for entry in expected_records(sim.events)[0] if entry.kind == "commit"]
    expected = [entry for entry in expected if entry.kind == "commit"]
    assert 0 < len(expected) < len(everything) // 2
    await assert_persisted(redis_client, expected, dead)


async def test_relay_errors_rejections_and_drops_lose_nothing(redis_server, redis_client):
    """429 before the upgrade, ConsumerTooSlow every 150 frames, a dropped socket, an #info: all survived."""
    sim_config = AtprotoSimConfig(seed=7, total=800, rate=4000, drop_after=150, reject_first=2)
    async with atproto_sim(sim_config) as (sim, url):
        expected, _ = expected_records(sim.events)
        async with running_service(at_config(redis_server.url, url)) as (service, _):
            stats = service.partitions[0].source
            await wait_for(lambda: reached(service, sim.events[-1].seq), timeout=TIMEOUT, what="the end")
            sim.send_info("OutdatedCursor", "test")
            await wait_for(lambda: stats.infos >= 1, timeout=TIMEOUT, what="the #info frame")
            reconnects = stats.reconnects
            sim.drop_connections()
            await wait_for(lambda: stats.reconnects > reconnects and stats.connected, timeout=TIMEOUT, what="a reconnect")
    assert stats.relay_errors >= 4 and stats.reconnects >= stats.relay_errors + 3
    assert sim.handshakes >= 2 + stats.relay_errors
    await assert_persisted(redis_client, expected, [])


async def test_future_cursor_is_reported_and_retried(redis_server, redis_client):
    sim_config = AtprotoSimConfig(seed=8, total=50)
    async with atproto_sim(sim_config) as (sim, url):
        config = at_config(redis_server.url, url, atproto__start=str(sim.events[-1].seq + 1000))
        async with running_service(config) as (service, _):
            stats = service.partitions[0].source
            await wait_for(lambda: stats.relay_errors >= 2, timeout=TIMEOUT, what="FutureCursor twice")
            assert stats.last_error is not None and "FutureCursor" in stats.last_error
    assert await redis_client("XLEN", KEYS.events) == 0


async def test_simulator_process_serves_the_firehose(redis_server, redis_client):
    """``python -m weir.sim atproto`` as a process (what ``weir demo`` would use) into the service."""
    from weir.sim.atproto_data import generate_history
    from weir.sim.process import open_atproto_sim

    sim_config = AtprotoSimConfig(seed=9, total=300)
    history = generate_history(sim_config)
    async with open_atproto_sim(sim_config) as url:
        async with running_service(at_config(redis_server.url, url)) as (service, _):
            await wait_for(lambda: reached(service, history[-1].seq), timeout=TIMEOUT, what="the end")
    await assert_persisted(redis_client, expected_records(history)[0], [])
