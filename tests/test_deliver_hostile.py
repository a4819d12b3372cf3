"""weir deliver (Parquet) against entries weir did not write and an environment that misbehaves.

Real Redis, real files: every valid entry is in exactly one committed file, every damaged one in
the delivery dead-letter stream with weir's own reason, and the partition never stalls.
"""

from __future__ import annotations

import errno
import functools
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import trio

from tests.helpers import capture_json_logs, wait_for
from tests.test_deliver_e2e import BASE_TS, assert_exactly_once, committed_ids, deliver_config, group_done, stream_ids, write_events
from weir.config import load_config
from weir.deliver.actor import ConsumerInUse
from weir.deliver.decisions import RollPolicy, hour_of
from weir.deliver.group import Entry
from weir.deliver.parquet import ParquetTarget
from weir.deliver.parquet_rows import SourceSchema
from weir.deliver.service import serve_deliver
from weir.errors import fatal_in
from weir.sinks.keys import delivery_dead_key, partition_keys

pytestmark = pytest.mark.integration


async def run_until_done(redis_server, redis_client, out, **deliver: str) -> dict[bytes, dict[bytes, bytes]]:
    """Deliver partition 1 until every entry is acknowledged; the dead letters by their entry id."""
    async with trio.open_nursery() as nursery:
        service = await nursery.start(functools.partial(
            serve_deliver, deliver_config(redis_server.url, out, consumer="a", **deliver)))
        await wait_for(functools.partial(group_done, redis_client), timeout=20, what="every entry acknowledged")
        service.stop()
    return {fields[b"entry_id"]: fields for _, fields in
            await redis_client("XRANGE", delivery_dead_key("farcaster", "1", "files"), "-", "+")}


async def test_a_uint64_field_of_thousands_of_digits_is_dead_lettered_not_a_crash_loop(
        redis_server, redis_client, tmp_path):
    # Past Python's int() limit for text (4,300 digits): a plain ValueError crashed the actor on
    # every restart, and its batch neighbours were dead-lettered with it (unexplained deliveries).
    await write_events(redis_server.url, "1", 1, 100)
    await redis_client("XADD", partition_keys("farcaster", "1").events, "101-0", "kind", "MERGE_MESSAGE",
                       "ts", "1764000000", "fid", b"7" * 5000)
    await write_events(redis_server.url, "1", 102, 100)
    letters = await run_until_done(redis_server, redis_client, tmp_path / "parquet", max_deliveries="1")
    assert list(letters) == [b"101-0"]
    assert b"fid" in letters[b"101-0"][b"reason"] and letters[b"101-0"][b"fid"] == b"7" * 5000
    assert_exactly_once(tmp_path / "parquet", [i for i in await stream_ids(redis_client) if i != "101-0"])


async def test_an_entrys_own_fields_cannot_forge_its_dead_letters_reason_or_id(redis_server, redis_client, tmp_path):
    await redis_client("XADD", partition_keys("farcaster", "1").events, "5-0", "ts", "1764000000",
                       "reason", "forged", "entry_id", "1-0", "deliveries", "0", b"\xff\xfe", b"\x80")
    letters = await run_until_done(redis_server, redis_client, tmp_path / "parquet", max_deliveries="1")
    assert list(letters) == [b"5-0"]
    assert b"no kind" in letters[b"5-0"][b"reason"] and letters[b"5-0"][b"deliveries"] == b"2"
    assert letters[b"5-0"][b"\xff\xfe"] == b"\x80"  # the entry's other fields as they were


@pytest.mark.parametrize("content", [b"", b"PAR1 truncated by a copy", "parquet-without-stream-id", "int-stream-ids"])
async def test_a_damaged_or_foreign_file_named_like_a_committed_one_does_not_stall_the_partition(
        redis_server, redis_client, tmp_path, content):
    out = tmp_path / "parquet"
    await write_events(redis_server.url, "1", 1, 300)  # its first hour is BASE_TS's
    foreign = out / "source=farcaster" / "partition=1" / f"hour={hour_of(BASE_TS)}" / "part-1-0_999-0-copy.parquet"
    foreign.parent.mkdir(parents=True)
    if isinstance(content, bytes):
        foreign.write_bytes(content)
    else:
        pq.write_table(pa.table({"other": [1]} if content == "parquet-without-stream-id" else {"stream_id": [1, 2]}),
                       foreign)
    with capture_json_logs() as records:
        letters = await run_until_done(redis_server, redis_client, out)
    assert letters == {}
    foreign.unlink()  # not weir's: every entry is in weir's own files, once
    assert_exactly_once(out, await stream_ids(redis_client))
    warned = records.of("deliver_unreadable_file")
    assert len(warned) == 1 and warned[0]["path"] == str(foreign), warned  # once, not per batch


@pytest.mark.parametrize("loss", ["group-destroyed", "stream-deleted"])
async def test_the_group_or_stream_deleted_under_a_running_deliverer_is_recreated_and_nothing_is_duplicated(
        redis_server, redis_client, tmp_path, loss):
    out = tmp_path / "parquet"
    key = partition_keys("farcaster", "1").events
    await write_events(redis_server.url, "1", 1, 300)
    async with trio.open_nursery() as nursery:
        service = await nursery.start(functools.partial(
            serve_deliver, deliver_config(redis_server.url, out, consumer="a")))
        await wait_for(functools.partial(group_done, redis_client), timeout=20, what="the first entries acknowledged")
        await write_events(redis_server.url, "1", 301, 300)  # some of these in an open file when the group goes
        if loss == "group-destroyed":
            await redis_client("XGROUP", "DESTROY", key, "files")
        else:
            await redis_client("DEL", key)
        await write_events(redis_server.url, "1", 601, 300)
        await wait_for(functools.partial(group_done, redis_client), timeout=20, what="every entry acknowledged")
        service.stop()
    expected = [f"{p}-0" for p in range(1, 901)] if loss == "group-destroyed" else None
    got = committed_ids(out)
    assert len(got) == len(set(got)), "an entry in two files"
    if expected is not None:
        assert sorted(got, key=lambda i: int(i[:-2])) == expected
    else:  # what was in the stream when it was deleted and not yet in a file is gone with it
        assert set(await stream_ids(redis_client)) <= set(got)


async def test_a_second_instance_under_a_live_instances_consumer_name_stops_with_one_line(
        redis_server, redis_client, tmp_path):
    """A fixed --consumer scaled to two replicas: the second took over the first's pending
    entries, held in its open file, and both committed them (containers often share a pid too:
    then each truncated the other's temporary file)."""
    out = tmp_path / "parquet"
    await write_events(redis_server.url, "1", 1, 2000)
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_deliver, deliver_config(redis_server.url, out, consumer="a")))
        await wait_for(lambda: any(out.rglob("*.tmp")), timeout=10, what="a file open")
        with pytest.raises(BaseExceptionGroup) as caught, trio.fail_after(15):
            async with trio.open_nursery() as second:  # started while the first holds entries pending to "a"
                await second.start(functools.partial(serve_deliver, deliver_config(redis_server.url, out, consumer="a")))
        assert isinstance(fatal_in(caught.value), ConsumerInUse), caught.value
        assert "consumer 'a'" in str(fatal_in(caught.value))
        await write_events(redis_server.url, "1", 2001, 2000)
        await wait_for(functools.partial(group_done, redis_client), timeout=20, what="every entry acknowledged")
        nursery.cancel_scope.cancel()
    assert_exactly_once(out, await stream_ids(redis_client))

async def test_a_full_disk_leaves_entries_pending_until_it_has_room_without_dead_letters_or_a_crash(
        redis_server, redis_client, tmp_path, monkeypatch):
    """ENOSPC while writing (mocked: no tmpfs without root): the actor crashed on it, its
    restarts re-read its pending entries (each re-read a delivery), so within seconds the service
    gave up, and valid entries went to the dead-letter stream as 'not accepted'."""
    out = tmp_path / "parquet"
    await write_events(redis_server.url, "1", 1, 1000)
    full = trio.Event()
    write_table = ParquetTarget._write_table

    def write_or_fail(self, file, table):
        if not full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        write_table(self, file, table)

    monkeypatch.setattr(ParquetTarget, "_write_table", write_or_fail)
    async with trio.open_nursery() as nursery:
        service = await nursery.start(functools.partial(
            serve_deliver, deliver_config(redis_server.url, out, consumer="a", max_deliveries="2")))
        await wait_for(lambda: service.stats["farcaster-parquet/1"].given_back > 0, timeout=10, what="entries given back")
        # The disk stays full until entries given back came back through a claim pass (claim_idle 1.5 s).
        await wait_for(lambda: service.stats["farcaster-parquet/1"].claimed > 0, timeout=10, what="a claim")
        full.set()
        await wait_for(functools.partial(group_done, redis_client), timeout=20, what="every entry acknowledged")
        service.stop()
    assert await redis_client("XLEN", delivery_dead_key("farcaster", "1", "files")) == 0
    assert_exactly_once(out, await stream_ids(redis_client))
    assert not list(out.rglob("*.tmp"))


async def test_a_discovered_partition_whose_name_would_leave_the_directory_is_skipped(redis_server, redis_client, tmp_path):
    out = tmp_path / "data" / "parquet"
    await write_events(redis_server.url, "1", 1, 100)
    # A key weir never writes, whose partition part is a path out of the Parquet directory.
    await redis_client("XADD", "{weir:farcaster:x/../../../escaped}:events", "1-0", "kind", "MERGE_MESSAGE", "ts", "1")
    await redis_client("XADD", b"{weir:farcaster:\xff}:events", "1-0", "kind", "MERGE_MESSAGE")  # stopped the service
    pipelines = json.dumps([{"source": "farcaster", "group": "files", "directory": str(out), "file_age": 0.3}])
    config = load_config(environ={}, overrides={"redis.url": redis_server.url, "deliver.pipelines": pipelines,
                                                "deliver.claim_idle": "1.5", "deliver.block_ms": "100"})
    with capture_json_logs() as records:
        async with trio.open_nursery() as nursery:
            service = await nursery.start(serve_deliver, config)
            await wait_for(functools.partial(group_done, redis_client), timeout=20, what="partition 1 delivered")
            service.stop()
    assert list(service.stats) == ["farcaster-parquet/1"]
    assert not (tmp_path / "escaped").exists() and not list(tmp_path.glob("*/source=farcaster"))
    assert_exactly_once(out, await stream_ids(redis_client))
    skipped = records.of("deliver_partition_skipped")
    assert sorted(r["partition"] for r in skipped) == ["b'{weir:farcaster:\\xff}:events'", "x/../../../escaped"], skipped


async def test_an_entry_that_crashes_the_deliverer_takes_only_itself_to_the_dead_letter_stream(
        redis_server, redis_client, tmp_path, monkeypatch):
    """An entry that raises what no one foresaw (mocked: a bug in the row mapping) crashes the
    actor on every delivery; its read-batch neighbours, re-read with it at each restart, were
    dead-lettered with it once their counts passed 4 x max_deliveries."""
    await write_events(redis_server.url, "1", 1, 300)
    values = SourceSchema.values

    def values_or_bug(self, entry_id, fields):
        if entry_id == "150-0":
            raise RuntimeError("a bug")
        return values(self, entry_id, fields)

    monkeypatch.setattr(SourceSchema, "values", values_or_bug)
    letters = await run_until_done(redis_server, redis_client, tmp_path / "parquet", max_deliveries="1")
    assert list(letters) == [b"150-0"]
    assert b"crashed the deliverer (RuntimeError)" in letters[b"150-0"][b"reason"]
    assert_exactly_once(tmp_path / "parquet", [i for i in await stream_ids(redis_client) if i != "150-0"])


async def test_two_targets_under_one_consumer_name_and_pid_write_separate_whole_files(tmp_path):
    """Where the live-twin check cannot see the twin (nothing pending when it started): the
    same temporary name was opened with O_TRUNC under the other's writer, committing a corrupt file."""
    def target() -> ParquetTarget:
        return ParquetTarget(directory=tmp_path, source="farcaster", partition="1", consumer="a", compression="zstd",
                             row_group_rows=10, roll=RollPolicy(max_rows=100, max_age=60))

    first, second = target(), target()
    entries = [Entry(f"{p}-0", {b"kind": b"MERGE_MESSAGE", b"ts": b"1764000000", b"data": b"x" * 100}) for p in range(1, 41)]
    for one, part in ((first, entries[:20]), (second, entries[20:])):
        assert await one.offer(part) == {}
    for one in (first, second):
        for prepared in await one.prepare(trio.current_time(), everything=True):
            await one.commit(prepared)
        await one.aclose()
    ids = sorted(pq.read_table(tmp_path, columns=["stream_id"]).column("stream_id").to_pylist(), key=lambda i: int(i[:-2]))
    assert ids == [entry.entry_id for entry in entries]


async def test_an_hour_directory_that_cannot_be_created_gives_its_entries_back_with_one_warning(tmp_path):
    (tmp_path / "source=farcaster" / "partition=1").mkdir(parents=True)
    (tmp_path / "source=farcaster" / "partition=1" / f"hour={hour_of(BASE_TS)}").write_bytes(b"")  # a file in its way
    target = ParquetTarget(directory=tmp_path, source="farcaster", partition="1", consumer="a", compression="zstd",
                           row_group_rows=10, roll=RollPolicy(max_rows=100, max_age=60))
    entries = [Entry(f"{p}-0", {b"kind": b"MERGE_MESSAGE", b"ts": b"%d" % BASE_TS}) for p in range(1, 31)]
    with capture_json_logs() as records:
        assert await target.offer(entries) == {}
    assert target.given_back() == [entry.entry_id for entry in entries] and target.next_due() is None
    assert [r["entries"] for r in records.of("deliver_write_failed")] == [30]
    await target.aclose()


async def test_a_group_destroyed_under_a_pipeline_that_starts_at_new_entries_loses_nothing(
        redis_server, redis_client, tmp_path):
    """start = "$" is where a new pipeline begins; a group that vanished under a running actor was
    recreated there too, dropping the entries in its open file and all written until then."""
    out = tmp_path / "parquet"
    pipelines = json.dumps([{"source": "farcaster", "partitions": ["1"], "group": "files", "directory": str(out),
                             "file_age": 0.3, "start": "$"}])
    config = load_config(environ={}, overrides={"redis.url": redis_server.url, "deliver.pipelines": pipelines,
                                                "deliver.claim_idle": "1.5", "deliver.block_ms": "100"})
    async with trio.open_nursery() as nursery:
        service = await nursery.start(serve_deliver, config)
        await write_events(redis_server.url, "1", 1, 300)
        await wait_for(functools.partial(group_done, redis_client), timeout=20, what="the first entries acknowledged")
        await write_events(redis_server.url, "1", 301, 300)
        await redis_client("XGROUP", "DESTROY", partition_keys("farcaster", "1").events, "files")
        await write_events(redis_server.url, "1", 601, 300)
        await wait_for(functools.partial(group_done, redis_client), timeout=20, what="every entry acknowledged")
        service.stop()
    assert_exactly_once(out, await stream_ids(redis_client))
