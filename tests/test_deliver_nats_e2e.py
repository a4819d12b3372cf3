"""weir deliver into a real nats-server (JetStream, file store) from a real Redis written by weir's
sink: every entry in the stream exactly once after JetStream's deduplication, through a kill -9 of
the deliverer mid-publish, a nats-server restart, and a replay of the whole group.

Every test reads the stream back message by message and counts them, and their distinct
Nats-Msg-Ids, against the entries of the Redis stream.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import signal
import subprocess

import nats
import pytest
import trio

import tests.test_deliver_e2e as parquet_e2e
from tests.helpers import capture_json_logs, wait_for, weir_args, weir_process
from tests.nats_server import NatsServer, running_nats
from weir.bridge import call_asyncio
from weir.config import load_config
from weir.deliver.service import serve_deliver
from weir.sinks.keys import delivery_dead_key, partition_keys

pytestmark = pytest.mark.integration

write_events = parquet_e2e.write_events
KeepWriting = parquet_e2e.KeepWriting
group_done = parquet_e2e.group_done
stream_ids = parquet_e2e.stream_ids


def nats_pipeline(nats_url: str, **options: object) -> dict[str, object]:
    return {"source": "farcaster", "partitions": ["1"], "group": "files", "target": "nats", "url": nats_url,
            "in_flight": 200, "ack_timeout": 2, **options}


def nats_config(redis_url: str, nats_url: str, settings: dict[str, str] | None = None, **options: object):
    return load_config(environ={}, overrides={
        "redis.url": redis_url, "redis.socket_timeout": "2", "deliver.pipelines": json.dumps([nats_pipeline(nats_url, **options)]),
        "deliver.claim_idle": "1.5", "deliver.claim_interval": "0.2", "deliver.block_ms": "100",
        "deliver.consumer": "a", "supervision.backoff_initial": "0.01", "supervision.backoff_max": "0.2",
        "log_level": "WARNING", **(settings or {})})


async def stream_messages(nats_url: str, stream: str = "WEIR") -> list[tuple[str, bytes, dict[str, str]]]:
    """Every message of the stream (subject, body, headers), read back by sequence."""

    async def read() -> list[tuple[str, bytes, dict[str, str]]]:
        client = await nats.connect(nats_url)
        try:
            js = client.jetstream()
            info = await js.stream_info(stream)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                out.append((msg.subject, msg.data or b"", dict(msg.headers or {})))
            return out
        finally:
            await client.close()

    return await call_asyncio(read)


async def pulled_by_a_durable_consumer(nats_url: str, subjects: str, count: int) -> list[str]:
    """The Msg-Ids a durable pull consumer receives, as docs/delivery.md consumes the stream: the
    first ``count``, then whatever else comes within a second (nothing, if the stream has ``count``)."""

    async def pull() -> list[str]:
        client = await nats.connect(nats_url)
        try:
            js = client.jetstream()
            sub = await js.pull_subscribe(subjects, durable="my-app", stream="WEIR")
            ids: list[str] = []
            while len(ids) < count:
                try:
                    batch = await sub.fetch(500, timeout=5)
                except TimeoutError:  # nats-py's or asyncio's, as in the docs
                    continue
                for msg in batch:
                    ids.append(msg.headers["Nats-Msg-Id"])
                    await msg.ack()
            try:
                ids += [msg.headers["Nats-Msg-Id"] for msg in await sub.fetch(1, timeout=1)]
            except TimeoutError:
                pass
            return sorted(ids)
        finally:
            await client.close()

    with trio.fail_after(60):
        return await call_asyncio(pull)


async def stream_count(nats_url: str, stream: str = "WEIR") -> int:
    async def count() -> int:
        client = await nats.connect(nats_url)
        try:
            return (await client.jetstream().stream_info(stream)).state.messages
        except nats.js.errors.NotFoundError:
            return 0
        finally:
            await client.close()

    return await call_asyncio(count)


async def assert_exactly_once_in_stream(nats_url: str, expected: list[str]) -> list[tuple[str, bytes, dict[str, str]]]:
    messages = await stream_messages(nats_url)
    ids = [headers["Nats-Msg-Id"] for _, _, headers in messages]
    duplicates = [i for i, n in collections.Counter(ids).items() if n > 1]
    assert not duplicates, f"{len(duplicates)} entries published twice, e.g. {duplicates[:5]}"
    assert len(messages) == len(expected)
    assert sorted(ids) == sorted(f"farcaster/1/{entry_id}" for entry_id in expected)
    return messages


async def test_every_entry_is_published_once_with_its_fields_as_headers_and_a_replay_is_deduplicated(
        redis_server, redis_client, tmp_path):
    await write_events(redis_server.url, "1", 1000, 2000)
    async with running_nats(tmp_path) as server:
        config = nats_config(redis_server.url, server.url)
        async with trio.open_nursery() as nursery:
            service = await nursery.start(functools.partial(serve_deliver, config))
            await wait_for(functools.partial(group_done, redis_client), timeout=60, what="every entry acknowledged")
            service.stop()
        expected = await stream_ids(redis_client)
        messages = await assert_exactly_once_in_stream(server.url, expected)
        by_id = {headers["Nats-Msg-Id"]: (subject, body, headers) for subject, body, headers in messages}
        subject, body, headers = by_id["farcaster/1/1234-0"]
        assert subject == "weir.farcaster.1.MERGE_MESSAGE"
        assert body == b"\x0a\x00payload-1234\xff"
        assert headers["Weir-kind"] == "MERGE_MESSAGE" and headers["Weir-key"] == b"h1234".hex()
        assert headers["Weir-fid"] == str(1234 % 97) and headers["Weir-block"] == "123" and headers["Weir-type"] == "CAST_ADD"
        assert float(headers["Weir-ts"]) > 1_764_000_000
        assert await pulled_by_a_durable_consumer(server.url, "weir.farcaster.>", len(by_id)) == sorted(by_id)
        # The whole group read again (as after a crash between publishes and XACKs): nothing new in the stream.
        await redis_client("XGROUP", "SETID", partition_keys("farcaster", "1").events, "files", "0")
        async with trio.open_nursery() as nursery:
            service = await nursery.start(functools.partial(serve_deliver, config))
            await wait_for(functools.partial(group_done, redis_client), timeout=60, what="the replay acknowledged")
            service.stop()
        assert service.stats["farcaster-nats/1"].delivered == 2000  # published again, every one
        await assert_exactly_once_in_stream(server.url, expected)  # and dropped by JetStream as duplicates


async def test_an_entry_larger_than_the_servers_max_payload_is_dead_lettered_and_the_rest_published(
        redis_server, redis_client, tmp_path):
    # nats-server refuses a message over its max_payload (1 MiB by default) on every try: retried
    # in the publish loop, it stalled the partition for ever with everything behind it.
    await write_events(redis_server.url, "1", 1, 100)
    await redis_client("XADD", partition_keys("farcaster", "1").events, "101-0", "kind", "MERGE_MESSAGE",
                       "ts", "1764000000", "data", b"x" * 2_000_000)
    await write_events(redis_server.url, "1", 102, 100)
    async with running_nats(tmp_path) as server:
        config = nats_config(redis_server.url, server.url, settings={"deliver.max_deliveries": "1"})
        async with trio.open_nursery() as nursery:
            service = await nursery.start(functools.partial(serve_deliver, config))
            await wait_for(functools.partial(group_done, redis_client), timeout=30, what="every entry acknowledged")
            service.stop()
        letters = await redis_client("XRANGE", delivery_dead_key("farcaster", "1", "files"), "-", "+")
        assert [fields[b"entry_id"] for _, fields in letters] == [b"101-0"]
        assert b"max_payload" in letters[0][1][b"reason"]
        await assert_exactly_once_in_stream(server.url, [i for i in await stream_ids(redis_client) if i != "101-0"])


async def test_kill_9_mid_publish_then_restart_is_exactly_once_in_the_stream(redis_server, redis_client, tmp_path):
    await write_events(redis_server.url, "1", 1, 20_000)
    async with running_nats(tmp_path) as server:
        pipeline = json.dumps([nats_pipeline(server.url, in_flight=500)])
        flags = ["--redis-url", redis_server.url, "--set", f"deliver.pipelines={pipeline}", "--set", "deliver.claim_idle=1.5",
                 "--set", "deliver.claim_interval=0.2", "--set", "deliver.block_ms=100", "--log-format", "json",
                 "--consumer", "first"]
        log_path = tmp_path / "deliver.log"
        writer = KeepWriting(redis_server.url, 20_000)

        async with trio.open_nursery() as writers:
            writers.start_soon(writer.run)
            async with weir_process(weir_args("deliver", *flags), log_path) as process:
                # Killed while publishing: some thousands in the stream, the backlog far from done.
                await wait_for(lambda: _publishing(server.url, redis_client, process), timeout=60,
                               what="publishing under way, with entries read and not acknowledged")
                assert process.returncode is None, log_path.read_text()[-3000:]
                os.kill(process.pid, signal.SIGKILL)
                await process.wait()
            writer.enough.set()  # the last batch finishes: written counts every entry
        pending = (await redis_client("XPENDING", partition_keys("farcaster", "1").events, "files"))["pending"]
        in_stream = await stream_count(server.url)
        assert pending > 0 and in_stream < writer.written  # killed with entries read and not acknowledged
        async with weir_process(weir_args("deliver", *flags), log_path) as process:
            await wait_for(functools.partial(group_done, redis_client), timeout=120, what="every entry acknowledged")
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                assert await process.wait() == 0, log_path.read_text()[-3000:]
        await assert_exactly_once_in_stream(server.url, await stream_ids(redis_client))
        assert await stream_count(server.url) == writer.written


async def _publishing(nats_url: str, redis_client, process: trio.Process) -> bool:
    """Some thousands in the stream and a batch read but not acknowledged (being published), or
    the process gone (the caller says why)."""
    if process.returncode is not None:
        return True
    if await stream_count(nats_url) < 3000:
        return False
    return (await redis_client("XPENDING", partition_keys("farcaster", "1").events, "files"))["pending"] > 0


async def test_a_nats_server_restart_while_delivering_loses_nothing_and_duplicates_nothing(
        redis_server, redis_client, tmp_path):
    """nats-server stopped and started again on its store while entries arrive; the URL carries a
    password, which no log line may show."""
    await write_events(redis_server.url, "1", 1, 3000)
    async with running_nats(tmp_path, user="weir", password="s3cret-Pa55") as server:
        config = nats_config(redis_server.url, server.url)
        writer = KeepWriting(redis_server.url, 3000, batch=100, pause=0.01)

        with capture_json_logs() as logs:
            async with trio.open_nursery() as nursery:
                service = await nursery.start(functools.partial(serve_deliver, config))
                async with trio.open_nursery() as writing:
                    writing.start_soon(writer.run)
                    await wait_for(lambda: stream_count(server.url), timeout=30, what="messages in the stream")
                    await server.stop()
                    down_at = writer.written
                    await wait_for(lambda: writer.written >= down_at + 1000, timeout=30, what="entries written while NATS is down")
                    await server.start()
                    count = await stream_count(server.url)
                    await wait_for(lambda: _more_than(server.url, count + 1000), timeout=60,
                                   what="publishing after the restart")
                    writer.enough.set()
                await wait_for(functools.partial(group_done, redis_client), timeout=60, what="every entry acknowledged")
                service.stop()
        assert logs.of("deliver_nats_disconnected"), "the restart was not noticed"
        assert "s3cret-Pa55" not in logs.text()
        await assert_exactly_once_in_stream(server.url, await stream_ids(redis_client))
        assert await stream_count(server.url) == writer.written


async def _more_than(nats_url: str, count: int) -> bool:
    return await stream_count(nats_url) > count


async def test_an_existing_stream_configured_otherwise_stops_weir_deliver_with_one_line(
        redis_server, redis_client, tmp_path):
    await write_events(redis_server.url, "1", 1, 10)
    async with running_nats(tmp_path, user="weir", password="s3cret-Pa55") as server:

        async def make_stream() -> None:
            client = await nats.connect(server.url)
            try:
                await client.jetstream().add_stream(name="WEIR", subjects=["weir.>"], duplicate_window=60)
            finally:
                await client.close()

        await call_asyncio(make_stream)
        pipeline = json.dumps([nats_pipeline(server.url)])
        result = await trio.run_process(
            weir_args("deliver", "--redis-url", redis_server.url, "--set", f"deliver.pipelines={pipeline}",
                      "--set", "metrics.port=0"),
            capture_stdout=True, capture_stderr=True, check=False, stdin=subprocess.DEVNULL)
        err = result.stderr.decode()
        assert result.returncode == 2, err
        # One line says what is wrong; the others are structured log lines (its metrics endpoint opened first).
        errors = [line for line in err.splitlines() if not line.startswith("{")]
        assert len(errors) == 1, err
        assert errors[0].startswith("weir: config error: deliver.pipelines: JetStream stream 'WEIR' exists with "
                                    "duplicate_window 60s (configured: 300s)"), err
        assert "s3cret-Pa55" not in err
        assert await stream_count(server.url) == 0


def test_the_server_binary_comes_from_the_wheel():
    from tests.nats_server import nats_server_binary

    version = subprocess.run([str(nats_server_binary()), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("nats-server: v2."), version.stdout



@pytest.mark.parametrize("at_start", ["down", "without-jetstream"])
async def test_nats_down_or_without_jetstream_at_start_is_waited_for(redis_server, redis_client, tmp_path, at_start):
    """weir deliver started before nats-server, or with one started without -js (the stream cannot
    be made): it says so once, and delivers everything once JetStream is there (same port)."""
    await write_events(redis_server.url, "1", 1, 300)
    server = NatsServer(store=tmp_path / "jetstream", log_path=tmp_path / "nats-server.log", jetstream=False)
    async with running_nats(tmp_path, server=server, started=at_start == "without-jetstream"):
        config = nats_config(redis_server.url, server.url)
        with capture_json_logs() as logs:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(serve_deliver, config))
                await wait_for(lambda: len(logs.of("deliver_nats_unavailable")) >= 2, timeout=30,
                               what="the start and the actor finding no JetStream")
                await server.stop()
                server.jetstream = True
                await server.start()
                await wait_for(functools.partial(group_done, redis_client), timeout=60, what="every entry acknowledged")
                nursery.cancel_scope.cancel()
        unavailable = logs.of("deliver_nats_unavailable")[0]["msg"]
        assert ("cannot create or check stream 'WEIR'" if at_start == "without-jetstream" else "cannot connect") in unavailable
        assert len(logs.of("deliver_nats_error")) <= 3, "the same error logged at every reconnect attempt"
        await assert_exactly_once_in_stream(server.url, await stream_ids(redis_client))
