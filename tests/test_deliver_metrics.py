"""Delivery on /metrics: scraped from a running `weir run` with delivery (deliver.with_run) and from a
standalone `weir deliver` on its own endpoint, against a real Redis; the values must move while
delivery runs and end equal to the streams' entries and the committed files.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import trio

from helpers import e2e_config, in_process_sim, running_service, wait_for
from test_deliver_e2e import stream_ids, write_events
from test_observability import ready, scrape, value
from weir.bridge import call_asyncio
from weir.config import load_config
from weir.deliver.group import ConsumerGroup
from weir.deliver.service import serve_deliver
from weir.redact import redact_url
from weir.sim.farcaster_data import SnapchainSimConfig
from weir.sinks.keys import delivery_dead_key, partition_keys

pytestmark = pytest.mark.integration


def files_of(directory: Path, partition: str) -> int:
    return len(list((directory / "source=farcaster" / f"partition={partition}").rglob("*.parquet")))


def delivered(metrics: dict, pipeline: str, partition: str) -> float:
    return metrics.get(("weir_deliver_entries_delivered_total",
                        frozenset({"pipeline": pipeline, "source": "farcaster", "partition": partition}.items())), 0.0)


async def test_weir_run_with_delivery_shows_each_partitions_delivery_on_its_metrics(redis_server, redis_client, tmp_path):
    out = tmp_path / "parquet"
    sim_config = SnapchainSimConfig(shards=2, seed=5, rate=3000, history=300, total=1200)
    pipeline = [{"source": "farcaster", "group": "files", "directory": str(out), "file_rows": 250, "file_age": 0.3}]
    started = time.time()
    async with in_process_sim(sim_config) as (_, url):
        config = e2e_config(redis_server.url, url, deliver__with_run="true", deliver__pipelines=json.dumps(pipeline),
                            deliver__claim_idle="10", deliver__block_ms="100")  # no claim under load
        async with running_service(config) as (service, _):
            base = service.observability.url
            first = await scrape(base)  # nothing committed yet: a file is due file_age after it opened
            assert delivered(first, "farcaster-parquet", "1") < 1200

            async def caught_up() -> bool:
                metrics = await scrape(base)
                return all(delivered(metrics, "farcaster-parquet", shard) == 1200
                           and metrics.get(("weir_deliver_lag_entries", labels(shard))) == 0
                           and metrics.get(("weir_deliver_pending", labels(shard))) == 0 for shard in ("1", "2"))

            await wait_for(caught_up, timeout=60, what="every entry delivered, and the group sampled with no lag")
            metrics = await scrape(base)
            status, verdict = await ready(base)
    for shard in ("1", "2"):
        each = dict(pipeline="farcaster-parquet", source="farcaster", partition=shard)
        assert value(metrics, "weir_deliver_entries_delivered_total", **each) == len(await stream_ids(redis_client, shard))
        assert value(metrics, "weir_deliver_commits_total", **each) == files_of(out, shard) >= 1
        for name in ("dead_lettered", "claimed", "skipped", "refused"):
            assert value(metrics, f"weir_deliver_entries_{name}_total", **each) == 0, name
        assert value(metrics, "weir_deliver_aborts_total", **each) == 0
        assert started <= value(metrics, "weir_deliver_last_commit_timestamp_seconds", **each) <= time.time()
        assert 0 <= value(metrics, "weir_deliver_sample_age_seconds", **each) < 5
        assert verdict["partitions"][f"deliver:farcaster-parquet/{shard}"] == {"ready": True}
    assert status == 200, verdict
    assert value(metrics, "weir_child_restarts_total", supervisor="root", child="deliver") == 0  # sampling crashed nothing


def labels(shard: str) -> frozenset:
    return frozenset({"pipeline": "farcaster-parquet", "source": "farcaster", "partition": shard}.items())


async def test_standalone_deliver_serves_its_own_metrics_endpoint(redis_server, redis_client, tmp_path):
    await write_events(redis_server.url, "1", 1000, 1500)
    out = tmp_path / "parquet"
    config = load_config(environ={}, overrides={**_overrides(redis_server.url, out), "metrics.port": "0"})
    stopping = trio.Event()
    async with trio.open_nursery() as nursery:
        service = await nursery.start(functools.partial(serve_deliver, config, stopping=stopping))
        base = service.observability.url

        async def caught_up() -> bool:
            metrics = await scrape(base)
            return delivered(metrics, "farcaster-parquet", "1") == 1500 and metrics.get(
                ("weir_deliver_lag_entries", labels("1"))) == 0

        await wait_for(caught_up, timeout=30, what="the backlog delivered")
        await write_events(redis_server.url, "1", 5000, 500)  # more: the counter moves on
        await wait_for(lambda: service.stats["farcaster-parquet/1"].delivered == 2000, timeout=30, what="the rest")
        metrics = await scrape(base)
        stopping.set()
    assert value(metrics, "weir_deliver_entries_delivered_total", pipeline="farcaster-parquet", source="farcaster",
                 partition="1") == 2000 == len(await stream_ids(redis_client))
    assert value(metrics, "weir_deliver_commits_total", pipeline="farcaster-parquet", source="farcaster",
                 partition="1") == files_of(out, "1")
    assert value(metrics, "weir_child_running", supervisor="deliver", child="farcaster-parquet/1") == 1


def _overrides(url: str, out: Path) -> dict[str, str]:
    """A standalone deliverer's settings: small files, short claim_idle (the pipeline's default group)."""
    pipeline = {"source": "farcaster", "partitions": ["1"], "directory": str(out), "file_rows": 400, "file_age": 0.3}
    return {"redis.url": url, "redis.socket_timeout": "2", "deliver.pipelines": json.dumps([pipeline]),
            "deliver.claim_idle": "1.5", "deliver.claim_interval": "0.2", "deliver.block_ms": "100",
            "supervision.backoff_initial": "0.01", "supervision.backoff_max": "0.2", "log_level": "WARNING"}


async def test_group_info_is_the_pending_count_and_the_lag_redis_reports(redis_server, redis_client, asyncio_loop):
    await write_events(redis_server.url, "1", 1000, 50)
    keys = partition_keys("farcaster", "1")
    client = aioredis.Redis.from_url(redis_server.url, socket_timeout=5.0)
    try:
        group = ConsumerGroup(client, redact_url(redis_server.url), stream=keys.events, group="files", consumer="c1",
                              dead_stream=delivery_dead_key("farcaster", "1", "files"))
        assert await group.info() is None  # no such group yet
        await group.ensure_group("0")
        info = await group.info()
        assert (info.pending, info.lag) == (0, 50)
        read = await group.read_new(20, 100)
        info = await group.info()
        assert (info.pending, info.lag) == (20, 30)
        await group.ack([entry.entry_id for entry in read[:5]])
        info = await group.info()
        assert (info.pending, info.lag) == (15, 30)
    finally:
        await call_asyncio(client.aclose)
