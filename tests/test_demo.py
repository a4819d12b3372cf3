"""``weir demo`` as a user runs it: the CLI in a subprocess, a simulator process, the embedded Redis.

The demo serves everything on 127.0.0.1 (the simulator is a local process, Redis the embedded
redis-server), so it needs no network. Each test runs it to completion with ``--rate 0``, checks
the exit code and the count in its summary line, then reopens the demo's Redis data directory and
checks that exactly the simulated events were persisted (ids, bytes, cursor).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pytest
import redis.asyncio as aioredis
import trio

from weir.bridge import call_asyncio
from weir.cli import main
from weir.sim.atproto_data import AtprotoSimConfig, expected_records, generate_history
from weir.sim.farcaster_data import SnapchainSimConfig
from weir.sinks.embedded_redis import RedisServerConfig, open_embedded_redis
from weir.sinks.keys import partition_keys

from helpers import assert_exact, offered

pytestmark = pytest.mark.integration

DEMO_TIMEOUT = 60.0
EVENTS = 200
SUMMARY = re.compile(
    r"^weir demo: (?P<persisted>[\d,]+) events persisted in [\d.]+ s .*; dead letters (?P<dead>\d+); "
    r"gaps (?P<gaps>\d+); restarts (?P<restarts>\d+)$", re.MULTILINE)
PROGRESS = re.compile(r"^\s*(?P<received>[\d,]+) received\s+(?P<persisted>[\d,]+) persisted", re.MULTILINE)


async def run_demo(data_dir: Path, *args: str) -> str:
    """``weir demo --data-dir DATA_DIR ARGS``: its stderr; fails unless it exits 0 within the timeout."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WEIR_")}  # the defaults, not the caller's
    with trio.fail_after(DEMO_TIMEOUT):  # a cancelled run_process kills the demo
        result = await trio.run_process(
            [sys.executable, "-m", "weir", "demo", "--data-dir", str(data_dir), *args],
            capture_stdout=True, capture_stderr=True, check=False, env=env,
        )  # fmt: skip
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "weir demo: Redis at redis://127.0.0.1:" in stderr, stderr
    return stderr


def summary(stderr: str) -> dict[str, int]:
    """The counts of the summary line and of the last progress line."""
    found = SUMMARY.findall(stderr)
    assert len(found) == 1, stderr
    progress = list(PROGRESS.finditer(stderr))
    assert progress, stderr
    persisted, dead, gaps, restarts = (int(x.replace(",", "")) for x in found[0])
    last = progress[-1]
    return {"persisted": persisted, "dead": dead, "gaps": gaps, "restarts": restarts,
            "received": int(last["received"].replace(",", "")), "progress_persisted": int(last["persisted"].replace(",", ""))}


async def persisted_entries(data_dir: Path, *streams: str) -> dict[str, tuple[list, bytes | None]]:
    """Reopen the demo's Redis data directory: each stream's entries and its cursor position."""
    out = {}
    async with open_embedded_redis(RedisServerConfig(data_dir=data_dir)) as server:
        client = aioredis.Redis.from_url(server.url, socket_timeout=5.0)
        try:
            for source, partition in (stream.split(":") for stream in streams):
                keys = partition_keys(source, partition)
                entries = await call_asyncio(client.execute_command, "XRANGE", keys.events, "-", "+")
                cursor = await call_asyncio(client.execute_command, "HGET", keys.cursor, "position")
                out[f"{source}:{partition}"] = (entries, cursor)
        finally:
            await call_asyncio(client.aclose)
    return out


async def test_demo_atproto_persists_every_simulated_record(tmp_path, asyncio_loop):
    data_dir = tmp_path / "redis"
    stderr = await run_demo(data_dir, "--network", "atproto", "--events", str(EVENTS), "--rate", "0")
    history = generate_history(AtprotoSimConfig(seed=1, total=EVENTS, rate=0))  # the demo's simulator: seed 1
    expected, dead = expected_records(history)
    assert len(expected) > EVENTS and not dead  # one entry per commit op
    counts = summary(stderr)
    assert counts == {"persisted": len(expected), "dead": 0, "gaps": 0, "restarts": 0, "received": EVENTS,
                      "progress_persisted": len(expected)}, stderr
    (entries, cursor), = (await persisted_entries(data_dir, "atproto:firehose-127.0.0.1")).values()
    assert [entry_id for entry_id, _ in entries] == [entry.stream_id for entry in expected]
    assert [fields[b"data"] for _, fields in entries] == [entry.data for entry in expected]
    assert cursor == str(history[-1].seq).encode()


async def test_demo_farcaster_is_the_default_and_persists_every_simulated_event(tmp_path, asyncio_loop):
    data_dir = tmp_path / "redis"
    stderr = await run_demo(data_dir, "--events", str(EVENTS), "--rate", "0")  # --network farcaster, --shards 2: defaults
    assert "simulating 2 Snapchain shards" in stderr
    sim_config = SnapchainSimConfig(shards=2, seed=1, rate=0, total=EVENTS)
    expected = {shard: offered(sim_config, shard) for shard in (1, 2)}
    counts = summary(stderr)
    assert counts == {"persisted": 2 * EVENTS, "dead": 0, "gaps": 0, "restarts": 0, "received": 2 * EVENTS,
                      "progress_persisted": 2 * EVENTS}, stderr
    found = await persisted_entries(data_dir, "farcaster:1", "farcaster:2")
    for shard in (1, 2):
        entries, cursor = found[f"farcaster:{shard}"]
        assert_exact(entries, expected[shard], shard=shard)
        assert cursor == str(expected[shard][-1][0]).encode()


DELIVERED = re.compile(r'^weir demo: (?P<rows>[\d,]+) rows delivered to (?P<files>[\d,]+) Parquet files in (?P<dir>\S+); '
                       r'query them with DuckDB: duckdb -c "(?P<query>[^"]+)"$', re.MULTILINE)


def delivered_ids(directory: Path) -> dict[str, list[str]]:
    """Partition -> the stream ids of every row of the committed files (pyarrow, Hive partitioning)."""
    table = ds.dataset(directory, format="parquet", partitioning="hive").to_table(columns=["stream_id", "partition"])
    out: dict[str, list[str]] = {}
    for stream_id, partition in zip(table.column("stream_id").to_pylist(), table.column("partition").to_pylist()):
        out.setdefault(str(partition), []).append(stream_id)
    return out


def assert_delivered_once(stderr: str, directory: Path, persisted: dict[str, tuple[list, bytes | None]]) -> None:
    """The delivery line's counts are the files' and their rows, and the rows are the persisted
    entries, each once; the DuckDB command it prints counts them too."""
    found = DELIVERED.findall(stderr)
    assert len(found) == 1, stderr
    rows, files, shown_dir, query = found[0]
    assert Path(shown_dir) == directory
    expected = {stream.split(":")[1]: sorted(entry_id.decode() for entry_id, _ in entries)
                for stream, (entries, _) in persisted.items()}
    got = delivered_ids(directory)
    assert {partition: sorted(ids) for partition, ids in got.items()} == expected  # each once: sorted lists, not sets
    assert int(rows.replace(",", "")) == sum(len(ids) for ids in expected.values())
    assert int(files.replace(",", "")) == len(list(directory.rglob("*.parquet")))
    assert duckdb.sql(query).fetchall()[0][0] == int(rows.replace(",", ""))


async def test_demo_delivers_every_persisted_event_to_parquet_in_its_data_dir(tmp_path, asyncio_loop):
    data_dir = tmp_path / "redis"
    stderr = await run_demo(data_dir, "--deliver", "parquet", "--events", str(EVENTS), "--rate", "0")
    assert summary(stderr)["persisted"] == 2 * EVENTS
    persisted = await persisted_entries(data_dir, "farcaster:1", "farcaster:2")
    assert_delivered_once(stderr, data_dir / "parquet", persisted)  # by default inside the data directory


async def test_demo_delivers_atproto_records_to_the_chosen_directory(tmp_path, asyncio_loop):
    data_dir, out = tmp_path / "redis", tmp_path / "files"
    stderr = await run_demo(data_dir, "--network", "atproto", "--deliver", "parquet", "--deliver-dir", str(out),
                            "--events", str(EVENTS), "--rate", "0")
    persisted = await persisted_entries(data_dir, "atproto:firehose-127.0.0.1")
    assert_delivered_once(stderr, out, persisted)
    assert not (data_dir / "parquet").exists()


def test_demo_deliver_without_pyarrow_names_the_extra(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if weir[parquet] were not installed
    assert main(["demo", "--deliver", "parquet"]) == 2  # before any simulator or Redis starts
    assert capsys.readouterr().err == ("weir: config error: deliver.pipelines: the parquet target needs pyarrow: "
                                       "pip install 'weir[parquet]'\n")
