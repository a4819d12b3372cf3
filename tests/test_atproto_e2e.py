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

from weir.actors.atproto import dictionary_cache_path
from weir.codecs import atproto_cbor as cbor
from weir.config import JETSTREAM_ZSTD_DICTIONARY_URL, load_config
from weir.sim.atproto import DICTIONARY_PATH, AtprotoSim
from weir.sim.atproto_data import (
    AtprotoSimConfig,
    ExpectedEntry,
    expected_records,
    jetstream_dictionary,
    stale_positions,
)
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
        "metrics.port": "0",  # any free port: concurrent services never collide
    }
    values.update({key.replace("__", "."): value for key, value in overrides.items()})
    return load_config(environ={}, overrides=values)


def last_position(sim: AtprotoSim, mode: str) -> int:
    return sim.events[-1].seq if mode == "firehose" else sim.js_times[-1]


def reached(service, position: int) -> bool:
    return service.partitions[0].sink.cursor == position


def logged(caplog, event: str) -> list[logging.LogRecord]:
    """The log records of one structured event (``extra={"event": …}``)."""
    return [record for record in caplog.records if getattr(record, "event", None) == event]


async def assert_persisted(redis_client, expected: list[ExpectedEntry], dead: list[int | None], *,
                           reason: bytes = b"does not match its CID", partition: str = PARTITION) -> None:
    keys = partition_keys("atproto", partition)
    entries = await redis_client("XRANGE", keys.events, "-", "+")
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
    dead_entries = await redis_client("XRANGE", keys.dead, "-", "+")
    positions = [int(fields[b"position"]) if fields[b"position"] else None for _, fields in dead_entries]
    assert sorted(positions, key=lambda p: -1 if p is None else p) == sorted(dead, key=lambda p: -1 if p is None else p)
    for _, fields in dead_entries:
        assert reason in fields[b"reason"]


@pytest.mark.parametrize("mode", ["firehose", "jetstream"])
async def test_every_record_once_with_dead_letters(redis_server, redis_client, mode, tmp_path):
    sim_config = AtprotoSimConfig(seed=3, total=600, corrupt_every=40)
    async with atproto_sim(sim_config) as (sim, url):
        extra = {}
        if mode == "jetstream":  # compressed with the simulator's published dictionary
            extra = {"atproto__compress": "true", "atproto__zstd_dictionary": sim.dictionary_url, "redis__data_dir": str(tmp_path)}
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


async def test_relay_errors_rejections_and_drops_lose_nothing(redis_server, redis_client, caplog):
    """429 before the upgrade, ConsumerTooSlow every 150 frames, a dropped socket, an #info: all
    survived, and each logged as a structured event (connect, disconnect, relay_error, relay_info)."""
    sim_config = AtprotoSimConfig(seed=7, total=800, rate=4000, drop_after=150, reject_first=2)
    caplog.set_level(logging.INFO, logger="weir.actors.atproto")
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
    connects, lost = logged(caplog, "connect"), logged(caplog, "disconnect")
    assert len(connects) == stats.connects and len(lost) == stats.reconnects
    assert connects[0].source == "atproto" and connects[0].partition == PARTITION and connects[0].from_id == 0
    assert connects[-1].from_id == sim.events[-1].seq and connects[-1].url == url + "/xrpc/com.atproto.sync.subscribeRepos"
    reasons = [record.error for record in lost]
    assert reasons[:2] == ["HTTP 429 before the WebSocket upgrade (Retry-After: 0)"] * 2
    assert reasons.count("RelayError: ConsumerTooSlow: Stream consumer too slow") == stats.relay_errors
    assert [record.reconnects for record in lost] == list(range(1, len(lost) + 1))
    assert all(record.resume_from is not None for record in lost[2:]) and lost[-1].resume_from == sim.events[-1].seq
    errors = logged(caplog, "relay_error")
    assert len(errors) == stats.relay_errors and {(r.error, r.detail) for r in errors} == {("ConsumerTooSlow", "Stream consumer too slow")}
    (info,) = logged(caplog, "relay_info")
    assert (info.info, info.detail, info.last_id) == ("OutdatedCursor", "test", sim.events[-1].seq)


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


# ----------------------------------------------------------------------------- Jetstream's zstd dictionary


def jetstream_config(redis_url: str, url: str, data_dir, **overrides: str):
    return at_config(redis_url, url, atproto__mode="jetstream", atproto__compress="true", redis__data_dir=str(data_dir), **overrides)


async def test_the_dictionary_url_is_fetched_once_cached_and_decodes_every_frame(redis_server, redis_client, tmp_path, caplog):
    """``zstd_dictionary`` = the simulator's published URL, whose frames need it: fetched at start,
    cached in the data directory, every compressed frame decoded into Redis; the next start (another
    partition, reading everything again) takes it from the cache without asking the server."""
    caplog.set_level(logging.INFO, logger="weir.actors.atproto")
    async with atproto_sim(AtprotoSimConfig(seed=12, total=300)) as (sim, url):
        expected, _ = expected_records(sim.events, mode="jetstream")
        for partition in ("first", "second"):
            config = jetstream_config(redis_server.url, url, tmp_path, atproto__partition=partition,
                                      atproto__zstd_dictionary=sim.dictionary_url)
            async with running_service(config) as (service, _):
                await wait_for(lambda: reached(service, sim.js_times[-1]), timeout=TIMEOUT, what=f"{partition} to finish")
                assert service.partitions[0].source.dead_letters == 0
            assert sim.dictionary_fetches == 1
            await assert_persisted(redis_client, expected, [], partition=partition)
    assert dictionary_cache_path(tmp_path, sim.dictionary_url).read_bytes() == sim.dictionary
    assert [(r.url, r.fetched, r.dict_id) for r in logged(caplog, "zstd_dictionary")] == [
        (sim.dictionary_url, True, sim.dictionary_id), (sim.dictionary_url, False, sim.dictionary_id)]


async def test_compress_without_a_dictionary_setting_uses_the_published_url(redis_server, redis_client, tmp_path):
    """No ``zstd_dictionary``: Bluesky's published URL is the default. Its cache entry is seeded here
    (with the simulator's dictionary, so no test reaches the internet): weir reads it from there."""
    cached = dictionary_cache_path(tmp_path, JETSTREAM_ZSTD_DICTIONARY_URL)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(jetstream_dictionary())
    async with atproto_sim(AtprotoSimConfig(seed=13, total=200)) as (sim, url):
        expected, _ = expected_records(sim.events, mode="jetstream")
        async with running_service(jetstream_config(redis_server.url, url, tmp_path)) as (service, _):
            await wait_for(lambda: reached(service, sim.js_times[-1]), timeout=TIMEOUT, what="the end")
        assert sim.dictionary_fetches == 0
    await assert_persisted(redis_client, expected, [])


async def test_a_dictionary_that_cannot_be_fetched_is_one_error_line_and_no_connection(redis_server, redis_client, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="weir.actors.atproto")
    async with atproto_sim(AtprotoSimConfig(seed=14, total=50)) as (sim, url):
        missing = sim.dictionary_url.replace(DICTIONARY_PATH, "/no/dictionary/here")
        config = jetstream_config(redis_server.url, url, tmp_path, atproto__zstd_dictionary=missing)
        async with running_service(config) as (service, _):
            await wait_for(lambda: bool(logged(caplog, "zstd_dictionary_unavailable")), timeout=TIMEOUT, what="the error")
            line = f"atproto.zstd_dictionary: cannot fetch {missing}: HTTP 404 Not Found"
            assert service.partitions[0].source.last_error == line
        assert sim.handshakes == 0  # no WebSocket without the dictionary its frames need
    record = logged(caplog, "zstd_dictionary_unavailable")[0]
    assert record.levelno == logging.ERROR and record.getMessage() == f"{PARTITION}: {line}" and record.url == missing
    assert await redis_client("XLEN", KEYS.events) == 0


# ----------------------------------------------------------------------------- rejections before the upgrade


@pytest.mark.parametrize("status", [429, 503])
async def test_a_rejection_retry_after_is_waited_before_reconnecting(redis_server, redis_client, status, caplog):
    """The backoff here is at most 0.1 s: the second handshake a second later is Retry-After's doing."""
    sim_config = AtprotoSimConfig(seed=15, total=100, reject_first=1, reject_status=status, retry_after=1.0)
    caplog.set_level(logging.INFO, logger="weir.actors.atproto")
    async with atproto_sim(sim_config) as (sim, url):
        expected, _ = expected_records(sim.events)
        async with running_service(at_config(redis_server.url, url)) as (service, _):
            await wait_for(lambda: reached(service, sim.events[-1].seq), timeout=TIMEOUT, what="the end")
            assert (service.partitions[0].source.connects, service.partitions[0].source.reconnects) == (2, 1)
    first, second = sim.handshake_times
    assert second - first >= 1.0
    (lost,) = logged(caplog, "disconnect")
    assert lost.error == f"HTTP {status} before the WebSocket upgrade (Retry-After: 1)" and lost.reconnect_in >= 1.0
    await assert_persisted(redis_client, expected, [])


async def test_5xx_before_the_upgrade_is_retried_with_backoff(redis_server, redis_client, caplog):
    """503s without Retry-After: each retry waits the drawn backoff delay, whose cap doubles per attempt."""
    initial = 0.05
    sim_config = AtprotoSimConfig(seed=16, total=100, reject_first=3, reject_status=503, retry_after=None)
    caplog.set_level(logging.INFO, logger="weir.actors.atproto")
    async with atproto_sim(sim_config) as (sim, url):
        expected, _ = expected_records(sim.events)
        config = at_config(redis_server.url, url, supervision__backoff_initial=str(initial), supervision__backoff_max="1")
        async with running_service(config) as (service, _):
            await wait_for(lambda: reached(service, sim.events[-1].seq), timeout=TIMEOUT, what="the end")
            assert (service.partitions[0].source.connects, service.partitions[0].source.reconnects) == (4, 3)
    lost = logged(caplog, "disconnect")
    assert [record.error for record in lost] == ["HTTP 503 before the WebSocket upgrade"] * 3
    assert len(sim.handshake_times) == 4
    for attempt, (record, before, after) in enumerate(zip(lost, sim.handshake_times, sim.handshake_times[1:])):
        assert record.reconnect_in <= initial * 2**attempt
        assert after - before >= record.reconnect_in - 0.001  # logged rounded to the ms
    await assert_persisted(redis_client, expected, [])


# ----------------------------------------------------------------------------- stale revs, oversized frames


@pytest.mark.parametrize("mode", ["firehose", "jetstream"])
async def test_stale_revs_are_counted_logged_and_dropped(redis_server, redis_client, mode, caplog):
    """Commits whose rev is equal to or older than the DID's last: the firehose drops both, Jetstream
    (one message per op, all with the commit's rev) only the older."""
    caplog.set_level(logging.WARNING, logger="weir.actors.atproto")
    async with atproto_sim(AtprotoSimConfig(seed=17, total=400, stale_every=7)) as (sim, url):
        stale = stale_positions(sim.events, mode=mode)
        expected, _ = expected_records(sim.events, mode=mode)
        async with running_service(at_config(redis_server.url, url, atproto__mode=mode)) as (service, _):
            await wait_for(lambda: reached(service, last_position(sim, mode)), timeout=TIMEOUT, what="the end")
            assert service.partitions[0].source.stale_revs == len(stale) > 5
    await assert_persisted(redis_client, expected, [])
    stored = {int(entry_id.split(b"-")[0]) for entry_id, _ in await redis_client("XRANGE", KEYS.events, "-", "+")}
    assert stored.isdisjoint(stale)
    records = logged(caplog, "stale_rev")
    assert [record.position for record in records] == stale
    kinds = {"equal" if record.rev == record.last_rev else "older" for record in records}
    assert all(record.rev <= record.last_rev for record in records)
    assert kinds == ({"equal", "older"} if mode == "firehose" else {"older"})


async def test_a_frame_over_the_5mb_limit_is_a_dead_letter_and_the_stream_goes_on(redis_server, redis_client, caplog):
    """A 6 MB commit frame (relays stop at 5 MB) over the real socket: the WebSocket takes it (its
    limit is twice atproto.max_frame_bytes), the reader dead-letters it with the size, the same
    connection goes on and every later event is persisted."""
    caplog.set_level(logging.WARNING, logger="weir.actors.atproto")
    async with atproto_sim(AtprotoSimConfig(seed=18, total=60)) as (sim, url):
        index = next(i for i, e in enumerate(sim.events) if i >= 30 and e.kind == "commit")
        event = sim.events[index]
        big = cbor.encode({"t": "#commit", "op": 1}) + cbor.encode({**cbor.decode(event.body), "blocks": bytes(6_000_000)})
        assert 5_000_000 < len(big) < 10_000_000
        sim.events[index] = attrs.evolve(event, frame=big)
        expected, _ = expected_records(sim.events[:index] + sim.events[index + 1:])
        async with running_service(at_config(redis_server.url, url)) as (service, _):
            stats = service.partitions[0].source
            await wait_for(lambda: reached(service, sim.events[-1].seq), timeout=TIMEOUT, what="the end")
            assert (stats.connects, stats.reconnects, stats.dead_letters) == (1, 0, 1)
    reason = f"frame of {len(big)} bytes exceeds the 5000000-byte limit"
    await assert_persisted(redis_client, expected, [None], reason=reason.encode())
    ((_, dead),) = await redis_client("XRANGE", KEYS.dead, "-", "+")
    assert dead[b"data"] == big
    (record,) = logged(caplog, "dead_letter")
    assert (record.position, record.reason) == (None, reason)


# ----------------------------------------------------------------------------- Jetstream reordering at the cutover


async def assert_each_once_by_time(redis_client, expected: list[ExpectedEntry]) -> list[tuple[bytes, dict]]:
    """Every expected Jetstream entry exactly once, found by its ``time_us`` (a late one is stored at
    a position above the cursor, not at its time), with its data; the stream's ids only grow."""
    entries = await redis_client("XRANGE", KEYS.events, "-", "+")
    got = [int(fields[b"time_us"]) for _, fields in entries]
    want = {entry.position: entry for entry in expected}
    assert len(got) == len(set(got)), f"{len(got) - len(set(got))} duplicated"
    assert set(got) == set(want), f"missing {sorted(set(want) - set(got))[:5]}, unexpected {sorted(set(got) - set(want))[:5]}"
    for entry_id, fields in entries:
        entry = want[int(fields[b"time_us"])]
        assert fields[b"data"] == entry.data and fields[b"kind"] == entry.kind.encode(), entry_id
        assert int(entry_id.split(b"-")[0]) >= entry.position  # at its time, or later when it came late
    return entries


async def test_jetstream_reordered_at_the_cutover_is_persisted_once_and_counted(redis_server, redis_client, caplog):
    """The simulator *process* (the chaos suite's way) with ``--reorder-at-cutover 5
    --duplicate-at-cutover 3``: the 5 late messages are persisted (above the cursor) and counted as
    reordered (and logged: event ``reordered``), the 3 repeated ones are skipped and counted as
    duplicates; both are on /metrics."""
    from test_observability import scrape, value

    caplog.set_level(logging.INFO, logger="weir.actors.atproto")
    from weir.sim.atproto_data import generate_history
    from weir.sim.process import open_atproto_sim

    sim_config = AtprotoSimConfig(seed=21, total=600, rate=1000, history=200, reorder_at_cutover=5, duplicate_at_cutover=3)
    history = generate_history(sim_config)
    expected, _ = expected_records(history, mode="jetstream")
    last = max(time_us for event in history for time_us, _ in event.jetstream)
    async with open_atproto_sim(sim_config) as url:
        async with running_service(at_config(redis_server.url, url, atproto__mode="jetstream")) as (service, _):
            await wait_for(lambda: reached(service, last), timeout=TIMEOUT, what="the end")
            stats = service.partitions[0].source
            assert (stats.reconnects, stats.reordered, stats.duplicates_skipped) == (0, 5, 3)
            metrics = await scrape(service.observability.url)
    labels = {"source": "atproto", "partition": PARTITION}
    assert value(metrics, "weir_source_reordered_total", **labels) == 5
    assert value(metrics, "weir_source_duplicates_total", **labels) == 3
    entries = await assert_each_once_by_time(redis_client, expected)
    times = [int(fields[b"time_us"]) for _, fields in entries]
    late = [t for i, t in enumerate(times) if t < max(times[:i], default=0)]
    assert len(late) == 5  # stored in the order they came: five with a time below one stored before them
    records = logged(caplog, "reordered")
    assert sum(record.count for record in records) == 5 and not any(record.beyond_rewind for record in records)
    assert min(record.oldest_time_us for record in records) == min(late)


async def test_jetstream_restart_inside_the_reordered_region_loses_and_repeats_nothing(redis_server, redis_client):
    """weir is stopped (cancelled, nothing drained) when the live messages sent ahead are durable and
    the late ones not yet sent; the next start rewinds (atproto.jetstream_rewind), recognises what
    it persisted by identity, and persists the late ones once, above the cursor."""
    sim_config = AtprotoSimConfig(seed=22, total=600, rate=1000, history=200, reorder_at_cutover=5, duplicate_at_cutover=3)
    async with atproto_sim(sim_config) as (sim, url):
        sim.late_gate = trio.Event()
        expected, _ = expected_records(sim.events, mode="jetstream")
        config = at_config(redis_server.url, url, atproto__mode="jetstream", atproto__jetstream_rewind="0.05")
        with trio.CancelScope() as scope:
            async with running_service(config) as (service, _):
                await wait_for(lambda: bool(sim.cutovers), timeout=TIMEOUT, what="the cutover")
                plan = sim.cutovers[0]
                gate = plan.index(-1)
                ahead, held = plan[gate - 5:gate], plan[gate + 1:gate + 6]
                await wait_for(lambda: reached(service, sim.js_times[ahead[-1]]), timeout=TIMEOUT, what="the messages sent ahead")
                scope.cancel()
        stored = {int(fields[b"time_us"]) for _, fields in await redis_client("XRANGE", KEYS.events, "-", "+")}
        assert {sim.js_times[i] for i in ahead} <= stored and stored.isdisjoint(sim.js_times[i] for i in held)
        cursor = int(await redis_client("HGET", KEYS.cursor, "position"))
        assert cursor == sim.js_times[ahead[-1]] > max(sim.js_times[i] for i in held)
        sim.late_gate.set()
        async with running_service(config) as (service, _):
            await wait_for(lambda: reached(service, sim.js_times[-1]), timeout=TIMEOUT, what="the end after the restart")
            stats = service.partitions[0].source
            assert stats.reordered >= 5 and stats.duplicates_skipped > 0
    assert len(sim.cutovers) == 2 and sim.cutovers[1][0] < ahead[0]  # the restart rewound before the cursor
    entries = await assert_each_once_by_time(redis_client, expected)
    late_ids = [entry_id for entry_id, fields in entries if int(fields[b"time_us"]) in {sim.js_times[i] for i in held}]
    assert all(int(entry_id.split(b"-")[0]) > cursor for entry_id in late_ids)


async def test_jetstream_reconnects_during_reordering_lose_and_repeat_nothing(redis_server, redis_client):
    """Connections dropped while the server reorders at every cutover: each reconnection rewinds,
    meets a new cutover, and the stream still holds every message once."""
    sim_config = AtprotoSimConfig(seed=23, total=1500, rate=2000, history=300, reorder_at_cutover=4, duplicate_at_cutover=2)
    async with atproto_sim(sim_config) as (sim, url):
        expected, _ = expected_records(sim.events, mode="jetstream")
        config = at_config(redis_server.url, url, atproto__mode="jetstream", atproto__jetstream_rewind="0.2")
        async with running_service(config) as (service, _):
            stats = service.partitions[0].source
            for drop in range(1, 4):
                await wait_for(lambda: len(sim.cutovers) == drop and sim.released > 300 + 200 * drop, timeout=TIMEOUT,
                               what=f"connection {drop} to stream live")
                sim.drop_connections()
            await wait_for(lambda: reached(service, sim.js_times[-1]), timeout=TIMEOUT, what="the end")
            assert stats.reconnects == 3 and len(sim.cutovers) == 4 and stats.duplicates_skipped > 0
    await assert_each_once_by_time(redis_client, expected)
