"""weir deliver against a real Redis, on streams written by weir's own sink: Parquet exactly once.

Every test counts, by stream id, the rows of every committed file (read with pyarrow and DuckDB)
against the entries of the stream: each exactly once, none missing.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import signal
from pathlib import Path

import random

import attrs
import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import redis.asyncio as aioredis
import trio

from tests.helpers import capture_json_logs, e2e_config, in_process_sim, offered, running_service, wait_for, weir_args, weir_process
from weir.bridge import call_asyncio
from weir.config import load_config
from weir.deliver.actor import DeliveryStats, PartitionDelivery
from weir.deliver.decisions import RollPolicy
from weir.deliver.group import ConsumerGroup
from weir.deliver.parquet import ParquetTarget
from weir.deliver.service import serve_deliver
from weir.sim.farcaster_data import SnapchainSimConfig
from weir.supervision import Backoff
from weir.events import Chunk, Event
from weir.sinks.keys import delivery_dead_key, partition_keys
from weir.sinks.redis_sink import open_redis_sink

pytestmark = pytest.mark.integration

HOUR = 3600.0
BASE_TS = 1_764_000_000.0  # an hour boundary falls inside every test's data


async def write_events(url: str, partition: str, first: int, count: int) -> None:
    """``count`` Farcaster-shaped events through weir's sink, their timestamps spread over two hours."""
    async with open_redis_sink(url, source="farcaster") as sink:
        for start in range(first, first + count, 500):
            events = [
                Event(source="farcaster", partition=partition, position=p, kind="MERGE_MESSAGE", key=b"h%d" % p,
                      payload=b"\x0a\x00payload-%d\xff" % p, timestamp=BASE_TS + HOUR * 1.5 * (p - first) / count,
                      fields={"block": p // 10, "fid": p % 97, "type": "CAST_ADD"})
                for p in range(start, min(start + 500, first + count))
            ]
            await sink.write(partition, [Chunk(partition=partition, events=events, through=events[-1].position)])


@attrs.define(eq=False)
class KeepWriting:
    """Entries keep arriving on partition 1 (``run`` in a nursery) until ``enough`` is set or the
    task is cancelled; ``written`` counts every batch the sink wrote."""

    url: str
    written: int
    batch: int = 200
    pause: float = 0.02
    enough: trio.Event = attrs.field(factory=trio.Event)

    async def run(self) -> None:
        while not self.enough.is_set():
            await write_events(self.url, "1", self.written + 1, self.batch)
            self.written += self.batch
            await trio.sleep(self.pause)


def deliver_config(url: str, directory: Path, *, partitions: str = "1", **deliver: str):
    pipeline = {"source": "farcaster", "partitions": partitions.split(","), "group": "files", "directory": str(directory),
                "compression": "zstd", "row_group_rows": 100, "file_rows": 400, "file_age": 0.3}
    values = {"redis.url": url, "redis.socket_timeout": "2", "deliver.pipelines": json.dumps([pipeline]),
              "deliver.claim_idle": "1.5", "deliver.claim_interval": "0.2", "deliver.block_ms": "100",
              "deliver.max_deliveries": "3", "supervision.backoff_initial": "0.01", "supervision.backoff_max": "0.2",
              "log_level": "WARNING"}
    values.update({f"deliver.{key}": value for key, value in deliver.items()})
    return load_config(environ={}, overrides=values)


def deliver_flags(url: str, directory: Path) -> list[str]:
    """`weir deliver`'s command line for the subprocess tests: small files, a short claim_idle.

    claim_idle 3 s and max_deliveries 20: on a loaded 2-core machine a deliverer stalled past
    claim_idle / 3 more than three times in one run, its own entries came back with rising
    delivery counts, and valid entries were dead-lettered (a known limit of count-based dead
    letters, docs/delivery.md); these tests are about kill -9, not about that.
    """
    pipeline = json.dumps([{"source": "farcaster", "partitions": ["1"], "group": "files", "directory": str(directory),
                            "row_group_rows": 200, "file_rows": 1000, "file_age": 0.5}])
    return ["--redis-url", url, "--set", f"deliver.pipelines={pipeline}", "--set", "deliver.claim_idle=3",
            "--set", "deliver.max_deliveries=20", "--set", "deliver.claim_interval=0.2", "--set", "metrics.port=0", "--set", "deliver.block_ms=100", "--log-format", "json"]


def committed_ids(directory: Path) -> list[str]:
    """The stream ids in every committed file (pyarrow, Hive partitioning), one per row."""
    if not any(directory.rglob("*.parquet")):
        return []
    dataset = ds.dataset(directory, format="parquet", partitioning="hive")
    return dataset.to_table(columns=["stream_id"]).column("stream_id").to_pylist()


async def stream_ids(client, partition: str = "1") -> list[str]:
    return [entry_id.decode() for entry_id, _ in await client("XRANGE", partition_keys("farcaster", partition).events, "-", "+")]


async def group_done(client, partition: str = "1", *, source: str = "farcaster", group: str = "files") -> bool:
    """Everything in the stream was delivered to the group and acknowledged."""
    key = partition_keys(source, partition).events
    groups = await client("XINFO", "GROUPS", key)
    info = {g[b"name"]: g for g in groups} if groups and isinstance(groups[0], dict) else {
        dict(zip(g[::2], g[1::2]))[b"name"]: dict(zip(g[::2], g[1::2])) for g in groups}
    state = info.get(group.encode())
    last = await client("XREVRANGE", key, "+", "-", "COUNT", 1)
    return state is not None and int(state[b"pending"]) == 0 and bool(last) and state[b"last-delivered-id"] == last[0][0]


def assert_exactly_once(directory: Path, expected: list[str]) -> None:
    got = committed_ids(directory)
    duplicates = [i for i, n in collections.Counter(got).items() if n > 1]
    assert not duplicates, f"{len(duplicates)} entries in two files, e.g. {duplicates[:5]}"
    assert sorted(got) == sorted(expected), f"{len(got)} rows, {len(expected)} entries; missing {sorted(set(expected) - set(got))[:5]}"


async def test_every_entry_lands_exactly_once_readable_by_pyarrow_and_duckdb(redis_server, redis_client, tmp_path):
    await write_events(redis_server.url, "1", 1000, 2000)
    out = tmp_path / "parquet"
    async with trio.open_nursery() as nursery:
        service = await nursery.start(functools.partial(serve_deliver, deliver_config(redis_server.url, out, consumer="a")))
        await wait_for(functools.partial(group_done, redis_client), timeout=30, what="every entry acknowledged")
        service.stop()
    expected = await stream_ids(redis_client)
    assert len(expected) == 2000
    assert_exactly_once(out, expected)
    hours = {p.parent.name for p in out.rglob("*.parquet")}
    assert len(hours) == 2, hours  # one directory per UTC hour of the events' timestamps
    # Footer metadata carries the range the name carries.
    for path in out.rglob("*.parquet"):
        meta = pq.read_metadata(path).metadata
        first, last = meta[b"weir.first_id"].decode(), meta[b"weir.last_id"].decode()
        assert path.name.startswith(f"part-{first}_{last}-")
        assert pq.read_metadata(path).row_group(0).column(0).compression == "ZSTD"
    rows = duckdb.sql(f"""
        SELECT count(*), count(DISTINCT stream_id), min(position), max(position), sum(fid), any_value(partition)
        FROM read_parquet('{out}/**/*.parquet', hive_partitioning = true)""").fetchall()[0]
    assert rows[:4] == (2000, 2000, 1000, 2999)
    assert rows[4] == sum(p % 97 for p in range(1000, 3000))
    assert str(rows[5]) == "1"
    data = duckdb.sql(f"SELECT data FROM read_parquet('{out}/**/*.parquet') WHERE position = 1234").fetchall()[0][0]
    assert bytes(data) == b"\x0a\x00payload-1234\xff"
    assert await redis_client("XLEN", delivery_dead_key("farcaster", "1", "files")) == 0


async def test_two_instances_sharing_a_group_split_the_work_without_duplicates(redis_server, redis_client, tmp_path):
    out = tmp_path / "parquet"
    await write_events(redis_server.url, "1", 1, 500)
    async with trio.open_nursery() as nursery:
        first = await nursery.start(functools.partial(serve_deliver, deliver_config(redis_server.url, out, consumer="a")))
        second = await nursery.start(functools.partial(serve_deliver, deliver_config(redis_server.url, out, consumer="b")))
        await write_events(redis_server.url, "1", 501, 3500)  # while both read
        await wait_for(functools.partial(group_done, redis_client), timeout=30, what="every entry acknowledged")
        first.stop()
        second.stop()
    assert_exactly_once(out, await stream_ids(redis_client))
    consumers = collections.Counter(path.name.rsplit("-", 1)[1] for path in out.rglob("*.parquet"))
    assert consumers["a.parquet"] > 0 and consumers["b.parquet"] > 0, consumers
    delivered = [s.delivered for s in (*first.stats.values(), *second.stats.values())]
    assert sum(delivered) == 4000 and min(delivered) > 0


async def test_an_entry_that_cannot_be_written_is_dead_lettered_after_max_deliveries(redis_server, redis_client, tmp_path):
    out = tmp_path / "parquet"
    await write_events(redis_server.url, "1", 1, 300)
    key = partition_keys("farcaster", "1").events
    # A fid that is not a uint64: the row cannot be built, the target refuses it every time.
    await redis_client("XADD", key, "301-0", "kind", "MERGE_MESSAGE", "data", b"\x00", "key", "", "ts", "1764000000", "fid", "x1")
    await write_events(redis_server.url, "1", 302, 100)
    dead_key = delivery_dead_key("farcaster", "1", "files")
    async with trio.open_nursery() as nursery:
        service = await nursery.start(functools.partial(serve_deliver, deliver_config(redis_server.url, out, consumer="a")))
        await wait_for(functools.partial(group_done, redis_client), timeout=30, what="every entry acknowledged or dead-lettered")
        service.stop()
    letters = await redis_client("XRANGE", dead_key, "-", "+")
    assert len(letters) == 1
    fields = letters[0][1]
    assert fields[b"entry_id"] == b"301-0" and fields[b"fid"] == b"x1" and fields[b"deliveries"] == b"4"
    assert b"fid" in fields[b"reason"] and b"not accepted after 3 deliveries" in fields[b"reason"]
    expected = [i for i in await stream_ids(redis_client) if i != "301-0"]
    assert_exactly_once(out, expected)
    assert service.stats["farcaster-parquet/1"].refused == 3


@pytest.mark.parametrize("same_consumer", [True, False], ids=["restart-same-consumer", "restart-new-consumer"])
async def test_kill_9_mid_file_then_restart_delivers_exactly_once(redis_server, redis_client, tmp_path, same_consumer):
    out = tmp_path / "parquet"
    await write_events(redis_server.url, "1", 1, 5000)
    settings = deliver_flags(redis_server.url, out)
    log_path = tmp_path / "deliver.log"

    async with trio.open_nursery() as writers:
        writers.start_soon(KeepWriting(redis_server.url, 5000).run)  # entries keep arriving, so a file is always open
        async with weir_process(weir_args("deliver", *settings, "--consumer", "first"), log_path) as process:
            # Killed once some files are committed while another is open.
            await wait_for(lambda: (len(list(out.rglob("*.parquet"))) >= 3 and any(out.rglob("*.tmp")))
                           or process.returncode is not None, timeout=60, what="three committed files and one open")
            assert process.returncode is None, log_path.read_text()[-3000:]
            os.kill(process.pid, signal.SIGKILL)
            await process.wait()
        writers.cancel_scope.cancel()
    assert any(out.rglob("*.tmp"))  # the open file, abandoned
    consumer = "first" if same_consumer else "second"
    async with weir_process(weir_args("deliver", *settings, "--consumer", consumer), log_path) as process:
        await wait_for(functools.partial(group_done, redis_client), timeout=90, what="every entry acknowledged")
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await process.wait() == 0, log_path.read_text()[-3000:]
    assert_exactly_once(out, await stream_ids(redis_client))
    assert not list(out.rglob("*.tmp")), "an abandoned temporary file was left behind"
    events = [json.loads(line).get("event") for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert "deliver_temp_removed" in events  # the file open at the kill was found and deleted
    if not same_consumer:
        assert "deliver_claimed" in events  # the dead consumer's pending entries were taken over


async def test_entries_read_again_that_are_in_a_committed_file_are_acknowledged_not_rewritten(
        redis_server, redis_client, tmp_path):
    """A consumer that died after committing a file but before its XACK: the entries are pending to
    it; whoever claims them finds them in the committed files and only acknowledges them."""
    out = tmp_path / "parquet"
    await write_events(redis_server.url, "1", 1, 1500)
    async with trio.open_nursery() as nursery:
        service = await nursery.start(functools.partial(serve_deliver, deliver_config(redis_server.url, out, consumer="a")))
        await wait_for(functools.partial(group_done, redis_client), timeout=30, what="every entry acknowledged")
        service.stop()
    key = partition_keys("farcaster", "1").events
    # Rewind the group and let a consumer that then "dies" take every entry: all pending, all committed.
    await redis_client("XGROUP", "SETID", key, "files", "0")
    await redis_client("XREADGROUP", "GROUP", "files", "ghost", "COUNT", 10_000, "STREAMS", key, ">")
    assert (await redis_client("XPENDING", key, "files"))["pending"] == 1500
    async with trio.open_nursery() as nursery:
        service = await nursery.start(functools.partial(serve_deliver, deliver_config(redis_server.url, out, consumer="b")))
        await wait_for(functools.partial(group_done, redis_client), timeout=30, what="the ghost's entries acknowledged")
        service.stop()
    assert service.stats["farcaster-parquet/1"].skipped == 1500
    assert service.stats["farcaster-parquet/1"].delivered == 0
    assert_exactly_once(out, await stream_ids(redis_client))


async def test_weir_run_with_delivery_lands_every_simulated_event_in_parquet(redis_server, redis_client, tmp_path):
    """Ingestion from the Snapchain simulator and delivery in one `weir run` (deliver.with_run)."""
    out = tmp_path / "parquet"
    sim_config = SnapchainSimConfig(shards=2, seed=21, rate=20_000, history=500, total=1500)
    expected = {shard: offered(sim_config, shard) for shard in (1, 2)}
    pipeline = [{"source": "farcaster", "group": "files", "directory": str(out), "file_rows": 300, "file_age": 0.3}]
    async with in_process_sim(sim_config) as (_, url):
        config = e2e_config(redis_server.url, url, deliver__with_run="true", deliver__pipelines=json.dumps(pipeline),
                            deliver__claim_idle="1.5", deliver__block_ms="100")
        async with running_service(config):
            for shard in (1, 2):
                await wait_for(functools.partial(group_done, redis_client, str(shard)), timeout=60,
                               what=f"shard {shard} delivered")
    for shard in (1, 2):
        rows = duckdb.sql(f"SELECT stream_id, data, fid FROM read_parquet('{out}/source=farcaster/partition={shard}/**/*.parquet')"
                          ).fetchall()
        assert sorted((r[0], bytes(r[1])) for r in rows) == sorted((f"{i}-0", p) for i, p in expected[shard])
        assert len(rows) == len(expected[shard]) and any(r[2] for r in rows)  # fids decoded where weir scanned them
    # The documented query (docs/delivery.md) runs on these files and counts what pyarrow counts.
    casts = duckdb.sql(f"""
        SELECT hour, fid, count(*) AS casts
        FROM read_parquet('{out}/source=farcaster/**/*.parquet', hive_partitioning = true)
        WHERE type = 'CAST_ADD' AND partition = 1
        GROUP BY ALL ORDER BY casts DESC""").fetchall()
    types = ds.dataset(out / "source=farcaster" / "partition=1", format="parquet").to_table(columns=["type"])
    assert 0 < sum(row[2] for row in casts) == types.column("type").to_pylist().count("CAST_ADD")


async def test_entries_held_in_an_open_file_while_a_commit_is_slow_are_not_written_twice(
        redis_server, redis_client, tmp_path):
    """A commit slower than claim_idle (a disk stalling on fsync) lets the entries of the other open
    files idle long enough for this consumer's own claim pass to take them back: they must not be
    offered a second time."""
    out = tmp_path / "parquet"
    await write_events(redis_server.url, "1", 1, 2000)  # two hours: two files open at once
    settings = load_config(environ={}, overrides={"deliver.claim_idle": "1", "deliver.claim_interval": "0.1",
                                           "deliver.block_ms": "50"}).deliver

    class SlowFirstCommit(ParquetTarget):
        slow = True

        async def commit(self, prepared):
            if self.slow:
                self.slow = False
                await trio.sleep(settings.claim_idle * 1.5)
            await super().commit(prepared)

    client = aioredis.Redis.from_url(redis_server.url)
    key = partition_keys("farcaster", "1").events
    group = ConsumerGroup(client, "redis", stream=key, group="files", consumer="a",
                          dead_stream=delivery_dead_key("farcaster", "1", "files"))
    stats = DeliveryStats()
    actor = PartitionDelivery(
        name="files/1", group=group, settings=settings, start="0", stats=stats, backoff=Backoff(initial=0.01, maximum=0.1),
        rng=random.Random(1),
        make_target=lambda: SlowFirstCommit(directory=out, source="farcaster", partition="1", consumer="a",
                                            compression="snappy", row_group_rows=100,
                                            roll=RollPolicy(max_rows=100_000, max_age=0.3)))
    stopping = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run, stopping)
            await wait_for(functools.partial(group_done, redis_client), timeout=30, what="every entry acknowledged")
            stopping.set()
    finally:
        await call_asyncio(client.aclose)
    assert stats.claimed > 0  # the slow commit did let entries idle past claim_idle
    assert_exactly_once(out, await stream_ids(redis_client))


async def test_pending_entries_deleted_from_the_stream_are_acknowledged_on_restart(redis_server, redis_client, tmp_path):
    out = tmp_path / "parquet"
    await write_events(redis_server.url, "1", 1, 200)
    key = partition_keys("farcaster", "1").events
    await redis_client("XGROUP", "CREATE", key, "files", "0")
    await redis_client("XREADGROUP", "GROUP", "files", "a", "COUNT", 1000, "STREAMS", key, ">")  # then "a" stopped
    await redis_client("XDEL", key, "50-0", "51-0")  # trimmed by an operator meanwhile
    async with trio.open_nursery() as nursery:
        service = await nursery.start(functools.partial(serve_deliver, deliver_config(redis_server.url, out, consumer="a")))
        await wait_for(functools.partial(group_done, redis_client), timeout=30, what="every entry acknowledged")
        service.stop()
    assert_exactly_once(out, await stream_ids(redis_client))
    assert len(committed_ids(out)) == 198
    assert await redis_client("XLEN", delivery_dead_key("farcaster", "1", "files")) == 0


async def test_ethereum_retractions_are_rows_a_query_applies(redis_server, redis_client, tmp_path):
    """Logs and the retraction of one of them (a reorg), through weir's sink; the documented DuckDB
    query (docs/delivery.md) keeps the logs that are still canonical."""
    out = tmp_path / "parquet"

    def log(position: int, kind: str, index: int) -> Event:
        return Event(source="ethereum", partition="1", position=position, kind=kind, key=b"1:0xb%d:%d" % (index, index),
                     payload=json.dumps({"logIndex": hex(index)}).encode(), timestamp=BASE_TS + position,
                     fields={"chain": 1, "block": 100 + index, "block_hash": f"0xb{index}", "log_index": index,
                             "tx": f"0x{index:064x}", "address": "0x" + "ab" * 20, "topic0": "0x" + "dd" * 32})

    events = [log(1, "log", 0), log(2, "log", 1), log(3, "log", 2), log(4, "retract", 1)]
    async with open_redis_sink(redis_server.url, source="ethereum") as sink:
        await sink.write("1", [Chunk(partition="1", events=events, through=4)])
    pipeline = {"source": "ethereum", "group": "files", "directory": str(out), "file_age": 0.3}
    config = load_config(environ={}, overrides={"redis.url": redis_server.url, "deliver.pipelines": json.dumps([pipeline]),
                                                "deliver.claim_idle": "1.5", "deliver.block_ms": "100"})
    async with trio.open_nursery() as nursery:
        service = await nursery.start(functools.partial(serve_deliver, config))
        await wait_for(lambda: any(out.rglob("*.parquet")), timeout=30, what="a committed file")
        service.stop()
    rows = duckdb.sql(f"""
        SELECT log_index, block, chain, kind FROM (
          SELECT *, row_number() OVER (PARTITION BY key ORDER BY position DESC, sub DESC) AS latest
          FROM read_parquet('{out}/source=ethereum/**/*.parquet', hive_partitioning = true)
        ) WHERE latest = 1 AND kind = 'log' ORDER BY log_index""").fetchall()
    assert rows == [(0, 100, 1, "log"), (2, 102, 1, "log")]
    kinds = pq.read_table(next(out.rglob("*.parquet")), columns=["kind"]).column("kind").to_pylist()
    assert kinds == ["log", "log", "log", "retract"]


@pytest.mark.parametrize("fault", ["redis-restart", "redis-hang"])
async def test_delivery_rides_out_a_redis_outage_exactly_once(durable_redis_server, durable_redis_client, tmp_path, fault):
    """Redis killed and started again (appendfsync always: it loses nothing it acknowledged), or
    hung (SIGSTOP) for longer than claim_idle, while entries arrive and files are being written."""
    server, client = durable_redis_server, durable_redis_client
    out = tmp_path / "parquet"
    await write_events(server.url, "1", 1, 1000)
    written = 1000
    enough = trio.Event()

    async def keep_writing() -> None:  # until told: every batch written (retried through the outage) is counted
        nonlocal written
        while not enough.is_set():
            while True:
                try:
                    await write_events(server.url, "1", written + 1, 100)
                    break
                except Exception:  # the outage: the same events again (the sink's write is idempotent)
                    await trio.sleep(0.05)
            written += 100
            await trio.sleep(0.01)

    config = deliver_config(server.url, out, consumer="a")
    config = attrs.evolve(config, redis=attrs.evolve(config.redis, socket_timeout=0.5))
    with capture_json_logs() as logs:
        async with trio.open_nursery() as nursery:
            service = await nursery.start(functools.partial(serve_deliver, config))
            async with trio.open_nursery() as writer:
                writer.start_soon(keep_writing)
                await wait_for(lambda: len(list(out.rglob("*.parquet"))) >= 2, timeout=30, what="two committed files")
                if fault == "redis-restart":
                    await server.kill()
                    await trio.sleep(1.0)  # down for a while: reads, acknowledgements and the writer all fail
                    await server.start()
                else:
                    server.pause()
                    await trio.sleep(2.5)  # past claim_idle (1.5 s): what was held may look abandoned
                    server.resume()
                files = len(list(out.rglob("*.parquet")))
                await wait_for(lambda: len(list(out.rglob("*.parquet"))) >= files + 3, timeout=30,
                               what="files committed after the outage")
                enough.set()
            await wait_for(functools.partial(group_done, client), timeout=60, what="every entry acknowledged")
            service.stop()
    assert logs.of("deliver_redis_unavailable"), "the outage was not noticed"
    assert_exactly_once(out, await stream_ids(client))
    assert len(committed_ids(out)) == written


async def test_kill_9_of_one_of_two_instances_the_other_takes_over_exactly_once(redis_server, redis_client, tmp_path):
    out = tmp_path / "parquet"
    await write_events(redis_server.url, "1", 1, 3000)
    settings = deliver_flags(redis_server.url, out)
    writer = KeepWriting(redis_server.url, 3000)

    def open_files_of(consumer: str) -> list[Path]:
        return list(out.rglob(f".part-{consumer}-*.tmp"))

    async with trio.open_nursery() as writers:
        writers.start_soon(writer.run)
        async with weir_process(weir_args("deliver", *settings, "--consumer", "survivor"), tmp_path / "survivor.log") as survivor:
            async with weir_process(weir_args("deliver", *settings, "--consumer", "victim"), tmp_path / "victim.log") as victim:
                await wait_for(lambda: len(list(out.rglob("part-*-victim.parquet"))) >= 2 and bool(open_files_of("victim")),
                               timeout=60, what="the victim committing files, with one open")
                os.kill(victim.pid, signal.SIGKILL)
                await victim.wait()
            assert open_files_of("victim")
            await trio.sleep(0.5)  # entries keep arriving for the survivor alone
            writer.enough.set()
            await wait_for(functools.partial(group_done, redis_client), timeout=90, what="every entry acknowledged")
            survivor.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                assert await survivor.wait() == 0
    assert_exactly_once(out, await stream_ids(redis_client))
    assert len(committed_ids(out)) == writer.written
    events = [json.loads(line).get("event") for line in (tmp_path / "survivor.log").read_text().splitlines()
              if line.startswith("{")]
    assert "deliver_claimed" in events and "deliver_temp_removed" in events
    assert not open_files_of("victim")  # removed once its entries were claimed


@pytest.mark.parametrize("codec", ["zstd", "snappy", "gzip", "none"])
async def test_compression_and_row_groups_are_as_configured(redis_server, redis_client, tmp_path, codec):
    out = tmp_path / "parquet"
    await write_events(redis_server.url, "1", 1, 1000)
    pipeline = {"source": "farcaster", "group": "files", "directory": str(out), "compression": codec,
                "row_group_rows": 128, "file_rows": 100_000, "file_age": 0.5}
    config = load_config(environ={}, overrides={"redis.url": redis_server.url, "deliver.pipelines": json.dumps([pipeline]),
                                                "deliver.claim_idle": "1.5", "deliver.block_ms": "100"})
    async with trio.open_nursery() as nursery:
        service = await nursery.start(functools.partial(serve_deliver, config))
        await wait_for(functools.partial(group_done, redis_client), timeout=30, what="every entry acknowledged")
        service.stop()
    assert_exactly_once(out, await stream_ids(redis_client))
    for path in out.rglob("*.parquet"):
        meta = pq.read_metadata(path)
        groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
        assert all(group.num_rows <= 128 for group in groups) and sum(g.num_rows for g in groups) == meta.num_rows
        assert {group.column(0).compression for group in groups} == {"UNCOMPRESSED" if codec == "none" else codec.upper()}
    assert max(pq.read_metadata(p).num_row_groups for p in out.rglob("*.parquet")) > 1


async def test_without_redis_url_it_reads_the_embedded_redis_of_a_running_weir(redis_server, redis_client, tmp_path):
    data_dir = tmp_path / "weir-data"
    data_dir.mkdir()
    (data_dir / "redis.url").write_text(redis_server.url + "\n")  # what `weir run` writes beside its embedded Redis
    out = tmp_path / "parquet"
    await write_events(redis_server.url, "1", 1, 300)
    config = deliver_config(redis_server.url, out, consumer="a")
    config = attrs.evolve(config, redis=attrs.evolve(config.redis, url="", data_dir=str(data_dir)))
    async with trio.open_nursery() as nursery:
        service = await nursery.start(functools.partial(serve_deliver, config))
        await wait_for(functools.partial(group_done, redis_client), timeout=30, what="every entry acknowledged")
        service.stop()
    assert_exactly_once(out, await stream_ids(redis_client))


def test_without_redis_url_and_no_running_weir_it_says_so_in_one_line(tmp_path, capsys):
    from weir.cli import main

    pipelines = json.dumps([{"source": "farcaster", "directory": str(tmp_path / "out")}])
    assert main(["deliver", "--data-dir", str(tmp_path / "nothing"), "--set", f"deliver.pipelines={pipelines}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("weir: config error: redis.url: not set, and no running weir's embedded Redis") and err.count("\n") == 1
