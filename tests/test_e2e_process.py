"""The real ``weir`` CLI as a subprocess: signals, kill -9 and restart, config errors, ``weir tail``.

The simulator runs as a process of its own (``open_snapchain_sim``); Redis is the test's redis-server.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
import trio

from weir.sim.farcaster_data import SnapchainSimConfig
from weir.sim.process import open_snapchain_sim

from helpers import (
    assert_exact,
    weir_args,
    weir_process,
    cursor_position,
    e2e_config,
    in_process_sim,
    offered,
    running_service,
    stream_entries,
    wait_for,
)

pytestmark = pytest.mark.integration

SHARDS = (1, 2)
TIMEOUT = 20.0


def run_args(redis_url: str, sim_url: str, *extra: str) -> list[str]:
    return weir_args(
        "run",
        "--redis-url", redis_url,
        "--farcaster-url", sim_url,
        "--set", "farcaster.start=oldest",
        "--set", "farcaster.shards=1,2",
        "--set", "farcaster.idle_timeout=5",
        "--set", "supervision.backoff_initial=0.01",
        "--set", "supervision.backoff_max=0.2",
        "--set", "metrics.port=0",
        *extra,
    )  # fmt: skip


async def persisted(redis_client, shard: int) -> int:
    return await redis_client("XLEN", f"{{weir:farcaster:{shard}}}:events")


async def wait_exit(process: trio.Process, timeout: float, log_path: Path) -> tuple[int, float]:
    start = trio.current_time()
    with trio.move_on_after(timeout):
        await process.wait()
    elapsed = trio.current_time() - start
    if process.returncode is None:
        raise AssertionError(f"weir did not exit within {timeout} s; log:\n{log_path.read_text()[-3000:]}")
    return process.returncode, elapsed


async def test_sigterm_under_load_drains_checkpoints_and_exits_0(redis_server, redis_client, tmp_path):
    sim_config = SnapchainSimConfig(shards=2, seed=21, rate=3000, history=0, total=9000)
    log_path = tmp_path / "weir.log"
    async with open_snapchain_sim(sim_config) as sim:
        async with weir_process(run_args(redis_server.url, sim.url), log_path) as process:

            async def streaming() -> bool:
                return all([await persisted(redis_client, shard) >= 500 for shard in SHARDS])

            await wait_for(streaming, timeout=TIMEOUT, what="weir to persist events")
            process.send_signal(signal.SIGTERM)
            code, elapsed = await wait_exit(process, 10.0, log_path)
    assert code == 0, log_path.read_text()[-3000:]
    assert elapsed <= 5.0, f"took {elapsed:.1f} s to drain and exit"
    for shard in SHARDS:
        entries = await stream_entries(redis_client, shard)
        events = offered(sim_config, shard)
        assert 500 <= len(entries) < len(events), "the stop was not mid-stream"
        assert_exact(entries, events[: len(entries)], shard=shard)
        # the checkpoint covers exactly what was written: nothing in flight was dropped or skipped
        assert await cursor_position(redis_client, shard) == int(entries[-1][0].split(b"-")[0])


def catches(pid: int, signum: int) -> bool:
    """The process has a handler installed for ``signum`` (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (signum - 1) & 1)


async def test_sigterm_while_weir_is_still_starting_stops_it_cleanly(redis_server, redis_client, tmp_path):
    """A SIGTERM in the ~1 s weir spends importing its dependencies (a service manager stopping
    what it just started) is an ordered stop too: exit 0, not Python's default death by signal."""
    sim_config = SnapchainSimConfig(shards=2, seed=23, rate=3000, history=0, total=9000)
    log_path = tmp_path / "weir.log"
    async with open_snapchain_sim(sim_config) as sim:
        async with weir_process(run_args(redis_server.url, sim.url, "--log-format", "json"), log_path) as process:
            # as soon as the entry point holds the signal: weir is still importing, long before serving
            await wait_for(lambda: catches(process.pid, signal.SIGTERM), timeout=TIMEOUT, what="the early handler")
            process.send_signal(signal.SIGTERM)
            code, elapsed = await wait_exit(process, 15.0, log_path)
    assert code == 0, log_path.read_text()[-3000:]
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert [e["signal"] for e in events if e.get("event") == "shutdown"] == ["SIGTERM"]
    assert any(e.get("event") == "stopped" for e in events)
    for shard in SHARDS:  # whatever it wrote before stopping is a clean prefix
        entries = await stream_entries(redis_client, shard)
        assert_exact(entries, offered(sim_config, shard, len(entries)), shard=shard)


async def test_two_stop_signals_while_weir_is_still_starting_exit_130_at_once(monkeypatch) -> None:
    """(Two signals sent back to back reach a process as one when the kernel coalesces them, so
    the two are planted as the entry point would have recorded them.)"""
    from weir import cli, entry
    from weir.config import load_config

    monkeypatch.setattr(entry, "_pending", [signal.SIGTERM, signal.SIGINT])
    config = load_config(environ={}, overrides={"redis.url": "redis://127.0.0.1:1/0"})
    with trio.fail_after(5):
        assert await cli.serve_until_signalled(config) == cli.EXIT_INTERRUPTED
    assert entry.take_pending() == []


def test_the_cli_called_in_process_leaves_the_signal_handlers_alone() -> None:
    """Only the console script holds stop signals during start-up; a program that calls
    weir.cli.main (the tests do) keeps its own handlers."""
    from weir import cli

    previous = signal.getsignal(signal.SIGTERM)
    marker = lambda signum, frame: None  # noqa: E731
    signal.signal(signal.SIGTERM, marker)
    try:
        cli.main(["chaos", "--list"])
        assert signal.getsignal(signal.SIGTERM) is marker
    finally:
        signal.signal(signal.SIGTERM, previous)


async def test_second_sigterm_exits_130_at_once(redis_server, redis_client, tmp_path):
    sim_config = SnapchainSimConfig(shards=2, seed=22, rate=3000, history=0, total=9000)
    log_path = tmp_path / "weir.log"
    async with open_snapchain_sim(sim_config) as sim:
        # a long socket timeout: with Redis hung, the drain cannot finish on its own
        args = run_args(redis_server.url, sim.url, "--set", "redis.socket_timeout=60")
        async with weir_process(args, log_path) as process:

            async def streaming() -> bool:
                return all([await persisted(redis_client, shard) >= 300 for shard in SHARDS])

            await wait_for(streaming, timeout=TIMEOUT, what="weir to persist events")
            redis_server.pause()  # a hung Redis: the persist actor waits on its reply
            try:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(0.5):  # the drain is stuck: it must not have exited by itself
                    await process.wait()
                assert process.returncode is None, "weir exited although its drain could not finish"
                process.send_signal(signal.SIGTERM)
                code, elapsed = await wait_exit(process, 10.0, log_path)
            finally:
                redis_server.resume()
    assert code == 130, log_path.read_text()[-3000:]
    assert elapsed <= 2.0, f"a second SIGTERM took {elapsed:.1f} s to exit"
    for shard in SHARDS:  # whatever was persisted is a clean prefix
        entries = await stream_entries(redis_client, shard)
        assert_exact(entries, offered(sim_config, shard, len(entries)), shard=shard)


async def test_kill_9_mid_stream_then_restart_delivers_exactly_once(redis_server, redis_client, tmp_path):
    sim_config = SnapchainSimConfig(shards=2, seed=23, rate=2500, history=0, total=4000)
    expected = {shard: offered(sim_config, shard) for shard in SHARDS}
    log_path = tmp_path / "weir.log"
    async with open_snapchain_sim(sim_config) as sim:
        args = run_args(sim_url=sim.url, redis_url=redis_server.url)
        async with weir_process(args, log_path) as process:

            async def some() -> bool:
                return all([await persisted(redis_client, shard) >= 600 for shard in SHARDS])

            await wait_for(some, timeout=TIMEOUT, what="weir to persist some events")
            process.kill()  # SIGKILL: no drain, no checkpoint, in-flight batches lost from memory
            await process.wait()
        assert process.returncode == -signal.SIGKILL
        for shard in SHARDS:
            entries = await stream_entries(redis_client, shard)
            assert 600 <= len(entries) < len(expected[shard]), "the kill was not mid-stream"
            assert_exact(entries, expected[shard][: len(entries)], shard=shard)

        async with weir_process(args, log_path) as process:

            async def finished() -> bool:
                return all([await cursor_position(redis_client, shard) == expected[shard][-1][0] for shard in SHARDS])

            await wait_for(finished, timeout=TIMEOUT, what="the restarted weir to persist every event")
            process.send_signal(signal.SIGTERM)
            code, _ = await wait_exit(process, 10.0, log_path)
        assert code == 0
    for shard in SHARDS:
        assert_exact(await stream_entries(redis_client, shard), expected[shard], shard=shard)
        assert await cursor_position(redis_client, shard) == expected[shard][-1][0]


def redis_server_pids(data_dir: Path) -> list[int]:
    """redis-server or valkey-server processes working in ``data_dir`` (it changes into its --dir; read from /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            name = (proc / "comm").read_text().strip()
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue  # exited meanwhile, or not ours to read
        if name in ("redis-server", "valkey-server") and cwd == str(data_dir):
            pids.append(int(proc.name))
    return pids


def process_alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited (only its exit status is left)


async def test_run_without_a_redis_url_uses_the_embedded_redis_and_stops_it(tmp_path, asyncio_loop):
    """``weir run --data-dir DIR`` and no Redis URL: weir starts its own redis-server (AOF) in DIR,
    says how to connect to it, persists there, and on SIGTERM drains, stops that server, exits 0."""
    sim_config = SnapchainSimConfig(shards=2, seed=28, rate=0, history=1500, total=1500)
    expected = {shard: offered(sim_config, shard) for shard in SHARDS}
    data_dir = tmp_path / "data"
    log_path = tmp_path / "weir.log"
    workdir = tmp_path / "cwd"  # weir's working directory: the default ./weir-data must not be used
    workdir.mkdir()
    try:
        await _run_with_embedded_redis(sim_config, expected, data_dir, log_path, workdir)
    finally:
        # weir killed by the harness (a failed assertion) cannot stop its redis-server: this test does
        for directory in (data_dir, workdir / "weir-data"):
            for pid in redis_server_pids(directory):
                os.kill(pid, signal.SIGKILL)


async def _run_with_embedded_redis(sim_config, expected, data_dir: Path, log_path: Path, workdir: Path) -> None:
    import redis.asyncio as aioredis

    from weir.bridge import call_asyncio
    from weir.sinks.embedded_redis import RedisServerConfig, open_embedded_redis

    async with open_snapchain_sim(sim_config) as sim:
        args = weir_args(
            "run", "--data-dir", str(data_dir), "--farcaster-url", sim.url,
            "--set", "farcaster.start=oldest", "--set", "farcaster.shards=1,2", "--set", "metrics.port=0",
        )  # fmt: skip
        assert "--redis-url" not in args
        async with weir_process(args, log_path, cwd=workdir) as process:
            connect_line = re.compile(r"redis-cli -p (\d+)")

            def says_how_to_connect() -> bool:
                return connect_line.search(log_path.read_text(errors="replace")) is not None

            await wait_for(says_how_to_connect, timeout=TIMEOUT, what="weir to say how to connect to its Redis")
            port = int(connect_line.search(log_path.read_text(errors="replace")).group(1))
            url = f"redis://127.0.0.1:{port}/0"
            assert (data_dir / "redis.url").read_text().strip() == url
            pids = redis_server_pids(data_dir)
            assert len(pids) == 1, f"expected one redis-server in {data_dir}, found {pids}"
            assert not (workdir / "weir-data").exists()

            client = aioredis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
            try:
                async def redis(*command):
                    return await call_asyncio(client.execute_command, *command)

                async def finished() -> bool:
                    return all([await cursor_position(redis, shard) == expected[shard][-1][0] for shard in SHARDS])

                await wait_for(finished, timeout=TIMEOUT, what="every event persisted in the embedded Redis")
                for shard in SHARDS:
                    assert_exact(await stream_entries(redis, shard), expected[shard], shard=shard)
            finally:
                await call_asyncio(client.aclose)
            process.send_signal(signal.SIGTERM)
            code, _ = await wait_exit(process, 10.0, log_path)
        assert code == 0, log_path.read_text()[-3000:]
    assert not any(process_alive(pid) for pid in pids), "the embedded redis-server outlived weir"
    assert redis_server_pids(data_dir) == []
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)  # nothing listens there any more
    assert not (data_dir / "redis.url").exists()
    # the data stays in DIR: a redis-server started on it again has every event and the cursor
    async with open_embedded_redis(RedisServerConfig(data_dir=data_dir)) as again:
        client = aioredis.Redis.from_url(again.url, socket_timeout=5.0, socket_connect_timeout=5.0)
        try:
            async def redis(*command):
                return await call_asyncio(client.execute_command, *command)

            for shard in SHARDS:
                assert_exact(await stream_entries(redis, shard), expected[shard], shard=shard)
                assert await cursor_position(redis, shard) == expected[shard][-1][0]
        finally:
            await call_asyncio(client.aclose)


async def test_bad_config_exits_2_with_a_one_line_message(tmp_path):
    result = await trio.run_process(
        weir_args("run", "--redis-url", "redis://127.0.0.1:1/0", "--set", "batch.max_events=0"),
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "batch.max_events" in lines[0]
    assert result.stdout == b""


async def test_tail_prints_the_last_events_of_each_partition_as_json(redis_server, redis_client):
    sim_config = SnapchainSimConfig(shards=2, seed=24, rate=0, history=300, total=300)
    expected = {shard: offered(sim_config, shard) for shard in SHARDS}
    async with in_process_sim(sim_config) as (_, url):
        async with running_service(e2e_config(redis_server.url, url)) as (service, _):
            await wait_for(
                lambda: all(v.sink.cursor == expected[int(v.name[-1])][-1][0] for v in service.partitions),
                timeout=TIMEOUT, what="the events to be persisted",
            )
    result = await trio.run_process(
        weir_args("tail", "--redis-url", redis_server.url, "--count", "3"),
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(lines) == 6
    for shard in SHARDS:
        mine = [line for line in lines if line["partition"] == str(shard)]
        want = [id_ for id_, _ in expected[shard][-3:]]
        assert [line["id"] for line in mine] == [f"{id_}-0" for id_ in want]
        assert [int(line["event"]["id"]) for line in mine] == want
        assert all(line["event"]["shard_index"] == shard for line in mine)


async def test_redis_refusing_the_password_stops_weir_with_exit_3_and_no_secret(redis_server, redis_client, tmp_path):
    """WRONGPASS is configuration, not an outage: weir stops with one `fatal:` line naming the
    (redacted) Redis URL and exit code 3, within the restart intensity, and never prints the password."""
    from helpers import fatal_run_args, run_until_exit

    from weir.errors import EXIT_FATAL

    await redis_client("ACL", "SETUSER", "weiruser", "on", ">right-password", "~*", "&*", "+@all")
    url = redis_server.url.replace("redis://", "redis://weiruser:SECRETWRONGPASS@")
    log_path = tmp_path / "weir.log"
    args = fatal_run_args(url, "--farcaster-url", "http://127.0.0.1:1", "--set", "farcaster.shards=1")
    code, events = await run_until_exit(args, log_path, timeout=60)
    text = log_path.read_text()
    assert code == EXIT_FATAL, text[-2000:]
    fatal = [e for e in events if e.get("event") == "fatal"]
    assert len(fatal) == 1 and "refused weir" in fatal[0]["msg"] and "***@127.0.0.1" in fatal[0]["msg"]
    assert "SECRETWRONGPASS" not in text
