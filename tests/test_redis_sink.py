"""RedisSink and persist.lua against a real redis-server (the embedded one)."""

from __future__ import annotations

import os
import random
import re
import time

import pytest
import redis.exceptions as rex
import trio

from weir.events import Chunk, DeadLetter, Event
from weir.sinks.keys import partition_keys
from weir.sinks.redis_sink import (
    PERSIST_SCRIPT,
    Cursor,
    RedisSink,
    SinkBehind,
    SinkUnavailable,
    WriteResult,
    is_transient_response,
    open_redis_sink,
)

pytestmark = [pytest.mark.integration, pytest.mark.every_server]

SOURCE = "farcaster"
PART = "1"
KEYS = partition_keys(SOURCE, PART)
U64_MAX = (1 << 64) - 1


def ev(
    position: int, sub: int = 0, *, partition: str = PART, payload: bytes | None = None, **fields: object
) -> Event:
    return Event(
        source=SOURCE,
        partition=partition,
        position=position,
        sub=sub,
        kind="MERGE_MESSAGE",
        key=b"key-%d-%d" % (position, sub),
        payload=payload if payload is not None else b"\x00payload-%d\xff" % position,
        timestamp=1700000000.25,
        fields=dict(fields),
    )


def chunk(
    *events: Event, through: int | None = None, token: str = "", dead: list[DeadLetter] | None = None
) -> Chunk:
    if through is None:
        through = max(e.position for e in events)
    return Chunk(partition=PART, events=list(events), through=through, token=token, dead=dead or [])


def dead(position: int | None, reason: str = "bad protobuf", payload: bytes = b"\x01junk") -> DeadLetter:
    return DeadLetter(
        source=SOURCE, partition=PART, payload=payload, reason=reason, position=position, received=12.5
    )


@pytest.fixture
async def sink(redis_server, asyncio_loop):
    async with open_redis_sink(redis_server.url, source=SOURCE, socket_timeout=2.0) as sink:
        yield sink


async def stream_ids(redis_client, key: str = KEYS.events) -> list[str]:
    return [entry_id.decode() for entry_id, _ in await redis_client("XRANGE", key, "-", "+")]


async def test_append_stores_fields_and_cursor(sink, redis_client):
    result = await sink.write(
        PART,
        [chunk(ev(5, fid=42, msg_type="CAST_ADD", raw=b"\x00\x01"), ev(5, 1), through=6, token="blockhash")],
    )

    assert result == WriteResult(appended=2, skipped=0, dead_appended=0, cursor=6)
    entries = await redis_client("XRANGE", KEYS.events, "-", "+")
    assert [entry_id for entry_id, _ in entries] == [b"5-0", b"5-1"]
    assert list(entries[0][1].items()) == [
        (b"kind", b"MERGE_MESSAGE"),
        (b"data", b"\x00payload-5\xff"),
        (b"key", b"key-5-0"),
        (b"ts", b"1700000000.25"),
        (b"fid", b"42"),
        (b"msg_type", b"CAST_ADD"),
        (b"raw", b"\x00\x01"),
    ]
    cursor = await redis_client("HGETALL", KEYS.cursor)
    assert cursor[b"position"] == b"6"
    assert cursor[b"token"] == b"blockhash"
    assert cursor[b"events"] == b"2"
    assert abs(int(cursor[b"updated_ms"]) / 1000 - time.time()) < 60
    assert await sink.read_cursor(PART) == Cursor(position=6, token="blockhash")


async def test_read_cursor_of_new_partition_is_none(sink):
    assert await sink.read_cursor("7") is None


async def test_read_since_returns_the_fields_of_the_latest_entries_in_pages(sink):
    """What a Jetstream source rebuilds its identity memory from after a restart: every entry at a
    position from the given one on (all subs of it), oldest first, without ``data``, across pages."""
    await sink.write(PART, [chunk(*(ev(p, sub, fid=p) for p in range(10, 20) for sub in (0, 1)))])
    got = await sink.read_since(PART, 15, page=3)
    assert [(f["fid"], "data" in f) for f in got] == [(str(p), False) for p in range(15, 20) for _ in (0, 1)]
    assert got[0] == {"kind": "MERGE_MESSAGE", "key": "key-15-0", "ts": "1700000000.25", "fid": "15"}
    assert len(await sink.read_since(PART, 15, page=3, limit=4)) == 4
    assert await sink.read_since(PART, 20) == [] and await sink.read_since("7", 0) == []


async def test_replaying_a_batch_writes_nothing(sink, redis_client):
    batch = [chunk(ev(1), ev(2)), chunk(ev(3), dead=[dead(3)])]
    assert await sink.write(PART, batch) == WriteResult(appended=3, skipped=0, dead_appended=1, cursor=3)
    before = await redis_client("HGETALL", KEYS.cursor)

    assert await sink.write(PART, batch) == WriteResult(appended=0, skipped=3, dead_appended=0, cursor=3)

    assert await stream_ids(redis_client) == ["1-0", "2-0", "3-0"]
    assert await redis_client("XLEN", KEYS.dead) == 1
    assert await redis_client("HGETALL", KEYS.cursor) == before  # not even updated_ms moved


async def test_overlapping_replay_writes_only_the_new_part(sink, redis_client):
    await sink.write(PART, [chunk(ev(10), ev(11), ev(12))])

    result = await sink.write(PART, [chunk(ev(11), ev(12)), chunk(ev(13), ev(14, fid=1))])

    assert result == WriteResult(appended=2, skipped=2, dead_appended=0, cursor=14)
    assert await stream_ids(redis_client) == ["10-0", "11-0", "12-0", "13-0", "14-0"]
    assert (await redis_client("HGETALL", KEYS.cursor))[b"events"] == b"5"


async def test_position_is_all_or_nothing_across_subs(sink, redis_client):
    await sink.write(PART, [chunk(ev(20, 0), ev(20, 1), ev(20, 2))])

    result = await sink.write(PART, [chunk(ev(20, 0), ev(20, 1), ev(20, 2), ev(21, 0), ev(21, 1))])

    assert (result.appended, result.skipped) == (2, 3)
    assert await stream_ids(redis_client) == ["20-0", "20-1", "20-2", "21-0", "21-1"]


async def test_batch_with_all_events_filtered_still_advances_cursor(sink, redis_client):
    await sink.write(PART, [chunk(ev(1))])

    result = await sink.write(PART, [Chunk(partition=PART, events=[], through=500, token="t500")])

    assert result == WriteResult(appended=0, skipped=0, dead_appended=0, cursor=500)
    assert await sink.read_cursor(PART) == Cursor(position=500, token="t500")
    # What the filter dropped is not re-read, and if it is replayed it is skipped.
    replay = await sink.write(PART, [chunk(ev(499), ev(500))])
    assert (replay.appended, replay.skipped) == (0, 2)
    assert await stream_ids(redis_client) == ["1-0"]


async def test_dead_letters(sink, redis_client):
    first = await sink.write(PART, [chunk(ev(1), through=5, dead=[dead(4, reason="truncated"), dead(None)])])
    assert first.dead_appended == 2

    # Replayed: position 4 is at or below the cursor (5): not again; unknown position: always.
    again = await sink.write(PART, [chunk(ev(6), through=8, dead=[dead(4), dead(None), dead(7)])])

    assert again.dead_appended == 2
    entries = await redis_client("XRANGE", KEYS.dead, "-", "+")
    assert [fields[b"position"] for _, fields in entries] == [b"4", b"", b"", b"7"]
    assert list(entries[0][1].items()) == [
        (b"reason", b"truncated"),
        (b"data", b"\x01junk"),
        (b"position", b"4"),
        (b"received", b"12.5"),
    ]
    assert (await redis_client("HGETALL", KEYS.cursor))[b"dead"] == b"4"
    assert await stream_ids(redis_client) == ["1-0", "6-0"]


async def test_positions_above_2_to_53_compare_exactly(sink, redis_client):
    two53 = 1 << 53  # as doubles, 2^53 and 2^53 + 1 are equal
    await sink.write(PART, [chunk(ev(two53))])

    result = await sink.write(PART, [chunk(ev(two53), ev(two53 + 1))])

    assert (result.appended, result.skipped, result.cursor) == (1, 1, two53 + 1)
    big = U64_MAX - 1
    result = await sink.write(
        PART, [chunk(ev(9_999_999_999_999_999_999), ev(10**19), ev(big), ev(U64_MAX, 3))]
    )
    assert (result.appended, result.cursor) == (4, U64_MAX)
    assert (await stream_ids(redis_client))[-2:] == [f"{big}-0", f"{U64_MAX}-3"]
    replay = await sink.write(PART, [chunk(ev(big), ev(U64_MAX, 3))])
    assert (replay.appended, replay.skipped) == (0, 2)
    assert await sink.read_cursor(PART) == Cursor(position=U64_MAX, token="")


async def test_lua_comparison_matches_python(redis_client):
    """The script's gt() on decimal strings agrees with Python ints on edge and random values."""
    match = re.search(rb"^local function gt\(a, b\)\n.*?^end\n", PERSIST_SCRIPT, re.M | re.S)
    assert match is not None
    lua = match.group(0) + (
        b"local out = {}\n"
        b"for i = 1, #ARGV, 2 do out[#out + 1] = gt(ARGV[i], ARGV[i + 1]) and 1 or 0 end\n"
        b"return out\n"
    )
    rng = random.Random(7)
    edges = [0, 1, 9, 10, (1 << 53) - 1, 1 << 53, (1 << 53) + 1, 10**15 - 1, 10**15, 10**15 + 1,
             10**16, 10**19 - 1, 10**19, U64_MAX - 1, U64_MAX]  # fmt: skip
    values = edges + [rng.randrange(0, U64_MAX + 1) >> rng.randrange(0, 64) for _ in range(150)]
    pairs = [(a, b) for a in values for b in rng.sample(values, 12)] + [(a, a + 1) for a in edges[:-1]]
    pairs += [(b, a) for a, b in pairs[-len(edges) + 1 :]]
    argv = [str(x) for pair in pairs for x in pair]

    got = await redis_client("EVAL", lua, 0, *argv)

    assert got == [int(a > b) for a, b in pairs]


async def test_cursor_token_follows_the_highest_through(sink):
    await sink.write(PART, [chunk(ev(1), through=3, token="a"), chunk(ev(5), through=9, token="b")])
    assert await sink.read_cursor(PART) == Cursor(position=9, token="b")

    # A replay of an older batch does not move the cursor or its token back.
    result = await sink.write(PART, [chunk(ev(1), through=3, token="a")])

    assert result.cursor == 9
    assert await sink.read_cursor(PART) == Cursor(position=9, token="b")


async def test_ids_at_or_below_the_stream_top_are_skipped_not_errors(sink, redis_client):
    await sink.write(PART, [chunk(ev(1), ev(2), ev(3))])
    await redis_client("DEL", KEYS.cursor)  # an operator lost the cursor

    result = await sink.write(PART, [chunk(ev(2), ev(3), ev(4))])

    assert result == WriteResult(appended=1, skipped=2, dead_appended=0, cursor=4, stale=2)
    assert await stream_ids(redis_client) == ["1-0", "2-0", "3-0", "4-0"]


async def test_deleted_top_entry_is_not_reused(sink, redis_client):
    await sink.write(PART, [chunk(ev(1), ev(5))])
    await redis_client("XDEL", KEYS.events, "5-0")
    await redis_client("DEL", KEYS.cursor)

    # 3 is above the last remaining entry but below the last generated id (5-0): XADD would fail.
    result = await sink.write(PART, [chunk(ev(3), ev(6))])

    assert (result.appended, result.stale) == (1, 1)
    assert await stream_ids(redis_client) == ["1-0", "6-0"]


async def test_out_of_order_events_in_a_batch_are_skipped(sink, redis_client):
    result = await sink.write(PART, [chunk(ev(0, 0), ev(0, 1), ev(7), ev(6), ev(8))])

    # 0-0 can never be a stream id; 6 comes after 7.
    assert (result.appended, result.skipped, result.stale) == (3, 2, 2)
    assert await stream_ids(redis_client) == ["0-1", "7-0", "8-0"]


async def test_malformed_batches_are_refused_before_redis(sink, redis_client):
    with pytest.raises(ValueError, match="at least one chunk"):
        await sink.write(PART, [])
    with pytest.raises(ValueError, match="in a batch for '2'"):
        await sink.write("2", [chunk(ev(1))])
    with pytest.raises(ValueError, match="through"):
        await sink.write(PART, [chunk(ev(5), through=4)])
    with pytest.raises(ValueError, match="uint64"):
        await sink.write(PART, [chunk(ev(U64_MAX + 1))])
    with pytest.raises(ValueError, match="uint64"):
        await sink.write(PART, [chunk(ev(1, -1))])
    with pytest.raises(ValueError, match="position"):
        await sink.write(PART, [chunk(ev(1, partition="2"), through=1)])
    with pytest.raises(ValueError, match="dead letter position"):
        await sink.write(PART, [chunk(ev(1), dead=[dead(-3)])])
    assert await redis_client("EXISTS", KEYS.events, KEYS.cursor) == 0


@pytest.mark.parametrize("bad", ["", "a:b", "{x}", "a b", "x}"])
def test_key_names_are_validated(bad):
    with pytest.raises(ValueError, match="partition"):
        partition_keys(SOURCE, bad)
    with pytest.raises(ValueError, match="source"):
        RedisSink("redis://localhost", source=bad)


def test_keys_share_one_hash_tag():
    keys = partition_keys("atproto", "bsky.network", prefix="app:weir")
    assert keys.as_tuple() == (
        "{app:weir:atproto:bsky.network}:events",
        "{app:weir:atproto:bsky.network}:cursor",
        "{app:weir:atproto:bsky.network}:dead",
    )


async def test_wrong_key_type_is_an_error_and_writes_nothing(sink, redis_client):
    await redis_client("SET", KEYS.dead, "not a stream")

    with pytest.raises(rex.ResponseError, match="WRONGTYPE") as info:
        await sink.write(PART, [chunk(ev(1), dead=[dead(1)])])

    assert not isinstance(info.value, SinkUnavailable)
    assert await redis_client("EXISTS", KEYS.events, KEYS.cursor) == 0


async def test_corrupt_cursor_is_an_error_and_writes_nothing(sink, redis_client):
    await redis_client("HSET", KEYS.cursor, "position", "12abc")

    with pytest.raises(rex.ResponseError, match="bad position"):
        await sink.write(PART, [chunk(ev(1))])

    assert await redis_client("EXISTS", KEYS.events) == 0


async def test_maxlen_trims_approximately(redis_server, redis_client):
    async with open_redis_sink(redis_server.url, source=SOURCE, maxlen=10) as sink:
        for start in range(1, 1000, 100):
            await sink.write(PART, [chunk(*(ev(p) for p in range(start, start + 100)))])

    length = await redis_client("XLEN", KEYS.events)
    assert 10 <= length < 1000
    assert (await stream_ids(redis_client))[-1] == "1000-0"
    assert (await redis_client("HGETALL", KEYS.cursor))[b"events"] == b"1000"


async def test_script_flushed_on_the_server_is_reloaded(sink, redis_client):
    await sink.write(PART, [chunk(ev(1))])
    await redis_client("SCRIPT", "FLUSH")

    assert (await sink.write(PART, [chunk(ev(2))])).appended == 1


async def test_other_partitions_and_prefixes_are_separate(redis_server, sink, redis_client):
    await sink.write(PART, [chunk(ev(1))])
    async with open_redis_sink(redis_server.url, source=SOURCE, prefix="other") as other:
        result = await other.write(PART, [chunk(ev(1))])
    assert result.appended == 1
    assert await redis_client("XLEN", "{other:farcaster:1}:events") == 1
    assert await redis_client("XLEN", KEYS.events) == 1


async def test_unreachable_server_raises_sink_unavailable(redis_server, sink):
    await sink.ping()
    await redis_server.kill()

    with pytest.raises(SinkUnavailable) as info:
        await sink.write(PART, [chunk(ev(1))])
    assert isinstance(info.value.__cause__, rex.ConnectionError)
    with pytest.raises(SinkUnavailable):
        await sink.ping()
    with pytest.raises(SinkUnavailable):
        await sink.read_cursor(PART)

    await redis_server.start()
    assert (await sink.write(PART, [chunk(ev(1))])).appended == 1


async def test_hung_server_times_out_as_sink_unavailable(redis_server, asyncio_loop):
    async with open_redis_sink(redis_server.url, source=SOURCE, socket_timeout=0.2) as sink:
        await sink.ping()
        redis_server.pause()
        try:
            with trio.fail_after(5):
                with pytest.raises(SinkUnavailable) as info:
                    await sink.write(PART, [chunk(ev(1))])
            assert isinstance(info.value.__cause__, rex.TimeoutError)
        finally:
            redis_server.resume()
        # The command sent before the timeout may run once the server resumes: still once only.
        await sink.write(PART, [chunk(ev(1))])
        assert await sink.read_cursor(PART) == Cursor(position=1, token="")


async def test_read_only_replica_is_sink_unavailable(sink, redis_client):
    await sink.write(PART, [chunk(ev(1))])
    await redis_client("REPLICAOF", "127.0.0.1", "1")  # nothing listens there: stays a replica
    try:
        with pytest.raises(SinkUnavailable, match="READONLY|read only") as info:
            await sink.write(PART, [chunk(ev(2))])
        assert isinstance(info.value.__cause__, rex.ResponseError)
    finally:
        await redis_client("REPLICAOF", "NO", "ONE")
    assert (await sink.write(PART, [chunk(ev(2))])).appended == 1


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (rex.ReadOnlyError("You can't write against a read only replica."), True),
        (rex.ResponseError("BUSY Redis is busy running a script."), True),
        (rex.ResponseError("MISCONF Redis is configured to save RDB snapshots"), True),
        (rex.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
        (rex.NoScriptError("No matching script."), True),
        (rex.ResponseError("Error running script (call to f_1): @user_script:9: -READONLY You can't"), True),
        (
            rex.ResponseError("Error running script (call to f_1): @user_script:9: -OOM command not allowed"),
            True,
        ),
        (rex.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
        (rex.ResponseError("ERR weir persist: bad through position x"), False),
    ],
)
def test_transient_error_classification(error, transient):
    assert is_transient_response(error) is transient


async def test_sink_must_be_open(asyncio_loop):
    sink = RedisSink("redis://127.0.0.1:1/0", source=SOURCE)
    with pytest.raises(RuntimeError, match="not open"):
        await sink.write(PART, [chunk(ev(1))])


@pytest.mark.skipif(not os.environ.get("WEIR_BENCH"), reason="benchmark: set WEIR_BENCH=1 (run with -s)")
async def test_throughput(sink):
    """Sink throughput for batches of 500 events with 300-byte payloads (prints the figures)."""
    batches, size = 200, 500

    def batch(start: int) -> list[Chunk]:
        events = [ev(p, payload=bytes(300), fid=100_000 + p, msg_type=1) for p in range(start, start + size)]
        return [
            Chunk(partition=PART, events=events[i : i + 50], through=start + i + 49)
            for i in range(0, size, 50)
        ]

    data = [batch(1 + k * size) for k in range(batches)]
    started = time.perf_counter()
    for b in data:
        sink._pack_evalsha(PART, b)
    pack = time.perf_counter() - started
    started, cpu_started = time.perf_counter(), time.process_time()
    for b in data:
        await sink.write(PART, b)
    write, write_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    started = time.perf_counter()
    for b in data:
        await sink.write(PART, b)
    replay = time.perf_counter() - started
    total = batches * size
    print(
        f"\npack ARGV: {pack / batches * 1e3:.2f} ms/batch ({total / pack:,.0f} events/s)"
        f"\nwrite:     {write / batches * 1e3:.2f} ms/batch ({total / write:,.0f} events/s end to end; "
        f"this process's CPU {write_cpu / batches * 1e3:.2f} ms/batch = "
        f"{total / write_cpu:,.0f} events/s per core)"
        f"\nreplay:    {replay / batches * 1e3:.2f} ms/batch ({total / replay:,.0f} events/s)"
    )


# -- Redis going back in time (lost acknowledged writes) -------------------------------------------


async def roll_back(redis_client, saved: dict[str, bytes | None]) -> None:
    """Put the partition's keys back to ``saved`` (DUMP values): the state a Redis that lost the
    writes since then (a restart before they reached its AOF, a lagging replica) comes back with."""
    for key, value in saved.items():
        await redis_client("DEL", key)
        if value is not None:
            await redis_client("RESTORE", key, 0, value)


async def dump(redis_client) -> dict[str, bytes | None]:
    return {key: await redis_client("DUMP", key) for key in (KEYS.events, KEYS.cursor, KEYS.dead)}


async def test_a_write_expecting_a_cursor_redis_no_longer_holds_is_refused_and_writes_nothing(sink, redis_client):
    first = await sink.write(PART, [chunk(ev(1), ev(2), ev(3))])
    saved = await dump(redis_client)
    second = await sink.write(PART, [chunk(ev(4), ev(5), ev(6))], expect=first.cursor)
    assert second.cursor == 6
    await roll_back(redis_client, saved)  # Redis lost the second write, which it had acknowledged

    with pytest.raises(SinkBehind) as caught:
        await sink.write(PART, [chunk(ev(7), ev(8))], expect=second.cursor)
    assert (caught.value.partition, caught.value.stored, caught.value.expected) == (PART, 3, 6)
    assert re.fullmatch(r"\{weir:farcaster:1\}:cursor holds cursor 3, below 6 which was already acknowledged: "
                        r"Redis lost acknowledged writes .*; the partition must be read again from 3", str(caught.value))
    # Writing 7-8 now would have moved the cursor over 4-6 for good: nothing was written.
    assert await stream_ids(redis_client) == ["1-0", "2-0", "3-0"]
    assert await sink.read_cursor(PART) == Cursor(position=3, token="")
    with pytest.raises(SinkBehind):
        await sink.check_behind(PART, 6)
    await sink.check_behind(PART, 3)  # what it holds is fine

    # The replay from the stored cursor (expecting what Redis holds) writes the lost events again.
    replay = await sink.write(PART, [chunk(ev(4), ev(5), ev(6), ev(7), ev(8))], expect=3)
    assert (replay.appended, replay.cursor) == (5, 8)
    assert await stream_ids(redis_client) == [f"{p}-0" for p in range(1, 9)]


async def test_a_cursor_that_is_gone_is_behind_any_expectation_and_none_expects_nothing(sink, redis_client):
    await sink.write(PART, [chunk(ev(1))])
    await redis_client("DEL", KEYS.cursor, KEYS.events)
    with pytest.raises(SinkBehind) as caught:
        await sink.write(PART, [chunk(ev(2))], expect=1)
    assert caught.value.stored is None and "holds no cursor" in str(caught.value) and "from its start" in str(caught.value)
    with pytest.raises(SinkBehind):
        await sink.check_behind(PART, 0)
    # A stored cursor above the expectation is fine (a timed-out write that did land; another writer).
    assert (await sink.write(PART, [chunk(ev(2), ev(3))])).cursor == 3
    assert (await sink.write(PART, [chunk(ev(4))], expect=2)).cursor == 4
    with pytest.raises(ValueError, match="expected cursor -1"):
        await sink.write(PART, [chunk(ev(5))], expect=-1)



async def test_an_unreachable_redis_is_named_without_its_password(asyncio_loop):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with open_redis_sink(f"redis://:hunter2@127.0.0.1:{port}/0", source=SOURCE, socket_timeout=1.0) as sink:
        with pytest.raises(SinkUnavailable) as caught:
            await sink.ping()
    assert f"redis at redis://***@127.0.0.1:{port}/0 unavailable" in str(caught.value)
    assert "hunter2" not in str(caught.value)
