"""Progress end to end: weir starts behind a simulated network's head and catches up.

Each simulator (real gRPC / WebSocket servers) holds a history; weir reaches it through the fault
proxy with its bandwidth capped, so it is behind for several samples whatever the machine's speed.
The progress (view.progress, /metrics, the `progress` log events) must show the lag, an ETA while
catching up, and the lag falling to 0 at the head: Farcaster (blocks; the height asked again while
streaming), Ethereum (blocks and block timestamps), the AT Protocol firehose (no head: time only).
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest
from helpers import capture_json_logs, e2e_config, in_process_sim, offered, running_service, wait_for
from test_atproto_e2e import at_config, atproto_sim, last_position, reached
from test_ethereum_e2e import chain, eth_config, simulated
from test_observability import scrape, service_url

from weir.chaos.proxy import Bandwidth, Direction, open_proxy
from weir.sim.atproto_data import AtprotoSimConfig
from weir.sim.ethereum import EthereumSimConfig
from weir.sim.farcaster_data import SnapchainSimConfig

TIMEOUT = 30.0
FAST = {"progress.log_interval": "0.1", "progress.window": "1"}  # a sample and a log line every 0.1 s


def behind_and_gaining(view) -> bool:
    progress = view.progress
    return progress is not None and progress.lag is not None and progress.lag > 0 and progress.catching_up


@pytest.mark.integration
async def test_the_lag_shown_falls_to_zero_as_weir_catches_up(redis_server) -> None:
    sim_config = SnapchainSimConfig(shards=1, seed=12, rate=0, history=600, total=600)
    last_id = offered(sim_config, 1)[-1][0]
    head = last_id >> 14  # the block GetInfo announces: the last of the history
    labels = frozenset({("source", "farcaster"), ("partition", "1")})
    with capture_json_logs() as logs:
        async with in_process_sim(sim_config) as (_, url), open_proxy("127.0.0.1", urlsplit(url).port, seed=5) as link:
            link.add(Bandwidth(kb_per_s=60), direction=Direction.DOWNSTREAM)  # ~300 bytes an event: ~200 events/s
            config = e2e_config(redis_server.url, link.http_url, shards="1", **FAST)
            async with running_service(config) as (service, _):
                view = service.partitions[0]
                await wait_for(lambda: behind_and_gaining(view), timeout=TIMEOUT, what="weir to be behind and gaining")
                behind = await scrape(service_url(service))
                await wait_for(lambda: view.sink.cursor == last_id, timeout=TIMEOUT, what="every event to be durable")
                await wait_for(lambda: view.progress is not None and view.progress.lag == 0, timeout=TIMEOUT,
                               what="a sample at the head")
                caught_up = await scrape(service_url(service))
                await wait_for(lambda: any(line["lag"] == 0 for line in logs.of("progress")), timeout=TIMEOUT,
                               what="a progress log event at the head")

    # While behind: the head is the history's last block, weir below it, an ETA, a lag in seconds.
    assert behind[("weir_source_head", labels)] == head
    assert 0 < behind[("weir_source_lag", labels)] <= head
    assert behind[("weir_source_progress_position", labels)] == head - behind[("weir_source_lag", labels)]
    assert behind[("weir_source_eta_seconds", labels)] > 0
    assert behind[("weir_source_catchup_rate", labels)] > 0
    # At the head: no lag, no ETA (not catching up).
    assert caught_up[("weir_source_head", labels)] == head
    assert caught_up[("weir_source_progress_position", labels)] == head
    assert caught_up[("weir_source_lag", labels)] == 0
    assert caught_up[("weir_source_lag_seconds", labels)] == 0
    assert ("weir_source_eta_seconds", labels) not in caught_up
    # The log: one event per interval; the head stays, so the lag never grows, and it ends at 0.
    lines = [line for line in logs.of("progress") if line["position"] is not None]
    assert lines and all(line["source"] == "farcaster" and line["partition"] == "1" and line["unit"] == "block"
                         and line["head"] == head for line in lines)
    lags = [line["lag"] for line in lines]
    assert lags == sorted(lags, reverse=True), lags
    assert lags[0] > 0 and lags[-1] == 0
    assert any(line["catching_up"] and line["eta_seconds"] > 0 for line in lines)
    assert all(line["eta_seconds"] is None and not line["catching_up"] for line in lines if line["lag"] == 0)


@pytest.mark.integration
async def test_a_farcaster_head_that_moves_is_asked_again_while_weir_is_behind(redis_server) -> None:
    """The height GetInfo gave at connect goes stale during a long catch-up: weir asks again every
    ``farcaster.head_refresh`` seconds, so the head (and the lag in seconds, from its growth) moves
    while weir is still below it."""
    sim_config = SnapchainSimConfig(shards=1, seed=13, rate=200, history=600)
    async with in_process_sim(sim_config) as (_, url), open_proxy("127.0.0.1", urlsplit(url).port, seed=6) as link:
        link.add(Bandwidth(kb_per_s=20), direction=Direction.DOWNSTREAM)  # slower than the node produces
        config = e2e_config(redis_server.url, link.http_url, shards="1", farcaster__head_refresh="0.2", **FAST)
        async with running_service(config) as (service, _):
            view = service.partitions[0]
            await wait_for(lambda: view.source.head is not None, timeout=TIMEOUT, what="the height at connect")
            at_connect = view.source.head

            def head_moved_ahead() -> bool:
                stats, progress = view.source, view.progress
                return (stats.head > at_connect and stats.last_id is not None and stats.head > stats.last_id >> 14
                        and progress is not None and progress.lag_seconds is not None and progress.lag_seconds > 0)

            await wait_for(head_moved_ahead, timeout=TIMEOUT, what="a newer height than weir's position, and a lag in seconds")
            assert view.source.connects == 1  # asked on the same stream, not learnt by reconnecting


@pytest.mark.integration
async def test_an_ethereum_backfill_shows_its_lag_in_blocks_and_block_time(redis_server) -> None:
    """Behind by a history of 300 blocks (12 s apart, as the simulator stamps them), backfilled 20
    at a time: the lag in seconds is the head's timestamp (or, for a head known by its number
    only, 12 s a block: the chain's block_time) minus the emitted block's; both fall to 0. With 3
    confirmations the head weir can reach is the newest block less 3: waiting for them is no lag."""
    sim_config = EthereumSimConfig(chain_id=5, seed=4, block_time=0.02, logs_per_block=4, history=300, blocks=5)
    async with simulated(sim_config) as (sim,), open_proxy("127.0.0.1", sim.port, seed=7) as link:
        link.add(Bandwidth(kb_per_s=150), direction=Direction.DOWNSTREAM)
        config = eth_config(redis_server.url, [chain(sim, url=link.url("ws"), backfill_blocks=20, block_time=12, confirmations=3)], **FAST)
        async with running_service(config) as (service, _):
            view = service.partitions[0]
            await wait_for(lambda: behind_and_gaining(view), timeout=TIMEOUT, what="weir to be behind and gaining")
            progress = view.progress
            assert progress is not None and progress.lag is not None
            assert progress.lag_seconds == 12 * progress.lag  # block timestamps, not a rate estimate
            # A sample taken before the last blocks shows lag 0 at an older head: wait for the final one.
            await wait_for(lambda: sim.finished.is_set() and view.progress is not None and view.progress.lag == 0
                           and view.progress.head == sim.chain.head_number - 3,
                           timeout=TIMEOUT, what="weir at the final head")
            final = view.progress
    assert final is not None and final.head == sim.chain.head_number - 3 == final.position
    assert final.lag_seconds == 0 and final.eta_seconds is None


@pytest.mark.integration
async def test_a_relay_without_a_head_shows_its_lag_in_time_and_an_eta(redis_server) -> None:
    """The AT Protocol firehose: no head seq, so progress is on the time axis. The history's events
    are 100 ms apart and end now; weir starts a minute behind and reads them faster than they were
    made, so the lag in seconds falls, with an ETA, to about nothing at the end."""
    step_us, total = 100_000, 600
    start_us = round(time.time() * 1e6) - step_us * total
    sim_config = AtprotoSimConfig(seed=8, total=total, time_base_us=start_us, time_step_us=step_us)
    async with atproto_sim(sim_config) as (sim, url), open_proxy("127.0.0.1", urlsplit(url).port, seed=9) as link:
        link.add(Bandwidth(kb_per_s=150), direction=Direction.DOWNSTREAM)
        async with running_service(at_config(redis_server.url, link.url("ws"), **FAST)) as (service, _):
            view = service.partitions[0]

            def behind_in_time_and_gaining() -> bool:
                progress = view.progress
                return progress is not None and progress.lag_seconds is not None and progress.lag_seconds > 5 \
                    and progress.catching_up

            await wait_for(behind_in_time_and_gaining, timeout=TIMEOUT, what="weir to be behind in time and gaining")
            behind = view.progress
            await wait_for(lambda: reached(service, last_position(sim, "firehose")), timeout=TIMEOUT, what="the last event")
            await wait_for(lambda: view.progress is not None and view.progress.position == last_position(sim, "firehose"),
                           timeout=TIMEOUT, what="a sample at the last event")
            final = view.progress
            since_last = time.time() - sim.events[-1].time_us / 1e6  # the relay has been quiet since
    assert behind is not None and final is not None
    assert behind.head is None and behind.lag is None and behind.eta_seconds is not None and behind.eta_seconds > 0
    # At the end: only the time since the last event was made (its ISO time has ms precision).
    assert final.lag_seconds is not None and 0 <= final.lag_seconds <= since_last + 0.001
    assert final.lag_seconds < behind.lag_seconds  # type: ignore[operator]
