"""The checker: pure comparisons, planted faults in a real Redis, and one end-to-end chaos smoke run.

The smoke run: weir (in-process ``serve``) → proxy → simulator, and weir → proxy → redis-server;
the hub link is reset twice and the Redis link hangs for 1 s mid-run; the checker must find
nothing lost, duplicated or out of order, and report a recovery time for each fault.
"""

from __future__ import annotations

import os

import pytest
import trio
from helpers import e2e_config, in_process_sim, keys, running_service, wait_for

from weir.chaos.checker import (
    RunReport,
    RunSampler,
    Sample,
    check_run,
    compare_partition,
    cursor_regressions,
    fault_report,
    offered_from_config,
    restarts_from_log,
)
from weir.chaos.processes import (
    InProcessHub,
    SimProcessHub,
    open_weir_process,
    weir_run_args,
)
from weir.chaos.proxy import open_proxy
from weir.chaos.schedule import FaultRecord, Schedule, Targets, TimedFault, run_schedule
from weir.sim.farcaster_data import SnapchainSimConfig
from weir.sim.process import open_snapchain_sim

SIM = SnapchainSimConfig(shards=1, seed=5, rate=0, history=40, total=40)
OFFERED = offered_from_config(SIM, [1])["1"]


def entry(id_: int, payload: bytes, sub: int = 0) -> tuple[bytes, dict[bytes, bytes]]:
    return b"%d-%d" % (id_, sub), {b"data": payload}


# -- pure -----------------------------------------------------------------------------------------


def test_compare_clean_partition_reports_zero():
    report = compare_partition("1", OFFERED, [entry(i, p) for i, p in OFFERED], final_cursor=OFFERED[-1][0])
    assert report.ok
    assert (report.offered, report.persisted, report.lost) == (40, 40, 0)


def test_compare_counts_each_kind_of_damage():
    entries = [entry(i, p) for i, p in OFFERED]
    del entries[10:13]  # lost: 3
    entries.insert(5, entry(OFFERED[4][0], OFFERED[4][1], sub=1))  # duplicate of event 4
    entries[20], entries[21] = (entries[20][0], entries[21][1]), (entries[21][0], entries[20][1])  # swap data
    entries.append((b"%d-0" % (OFFERED[-1][0] + 1), {b"data": b"never offered"}))
    report = compare_partition("1", OFFERED, entries, final_cursor=OFFERED[-1][0])
    assert report.lost == 3
    assert report.duplicated == 1
    assert report.out_of_order == 1
    assert report.wrong_id == 2  # the swapped pair
    assert report.unexpected == 1
    assert not report.ok


def test_dead_letters_account_for_offered_events():
    dead = [(b"1-0", {b"data": OFFERED[7][1]})]
    entries = [entry(i, p) for n, (i, p) in enumerate(OFFERED) if n != 7]
    report = compare_partition("1", OFFERED, entries, dead=dead, final_cursor=OFFERED[-1][0])
    assert report.ok and report.dead == 1


def test_cursor_regressions_and_a_vanished_cursor():
    assert cursor_regressions([None, None, 5, 5, 9, 12]) == 0
    assert cursor_regressions([5, 9, 7, 8, 12]) == 1
    assert cursor_regressions([5, 9, None, 9]) == 1


def test_recovery_is_the_first_new_event_after_the_fault_clears():
    samples = [Sample(at=t / 10, lengths=(n,), cursors=(n,), rss_kb=None) for t, n in
               [(0, 0), (1, 10), (2, 20), (3, 20), (4, 20), (5, 20), (6, 20), (7, 25), (8, 35), (9, 45)]]
    record = FaultRecord(fault=TimedFault(target="redis_link", kind="timeout", start=0, duration=0.3),
                         applied_at=0.25, cleared_at=0.55)
    report = fault_report(record, samples, origin=0.0, window=0.3)
    assert report.recovery_s == pytest.approx(0.15)
    assert report.rate_during == pytest.approx(0.0)
    assert report.rate_after == pytest.approx((35 - 20) / 0.3)  # from the last sample before the window


def test_restarts_and_reconnects_are_counted_from_the_log():
    text = (
        "WARNING weir.supervision: supervisor farcaster/1: child source restarting (strategy=one_for_all)\n"
        "WARNING weir.actors.farcaster: shard 1: stream from http://x:1 lost (reset); reconnecting in 0.01s from event 5\n"
        "WARNING weir.actors.farcaster: shard 2: stream from http://x:1 lost (reset); reconnecting in 0.01s from event 7\n"
    )
    assert restarts_from_log(text) == (1, 2)


def test_report_row_and_verdict():
    clean = compare_partition("1", OFFERED, [entry(i, p) for i, p in OFFERED], final_cursor=OFFERED[-1][0])
    report = RunReport(name="smoke", partitions=(clean,), restarts=2, rss_peak_kb=80 * 1024)
    row = report.table_row()
    assert row.startswith("| smoke | 40 | 40 | 0 | 0 | 0 | 0 | 0 |")
    assert "80 MiB" in row and row.endswith("| ok |")
    assert row.count("|") == RunReport.table_header().splitlines()[0].count("|")


# -- planted faults in a real Redis ---------------------------------------------------------------


async def write_events(redis_client, events, *, cursor: int | None = None) -> None:
    for id_, payload in events:
        await redis_client("XADD", keys(1).events, f"{id_}-0", "data", payload, "kind", "MERGE_MESSAGE")
    if cursor is not None:
        await redis_client("HSET", keys(1).cursor, "position", cursor)


@pytest.mark.integration
async def test_clean_redis_reports_zero(redis_server, redis_client):
    await write_events(redis_client, OFFERED, cursor=OFFERED[-1][0])
    report = await check_run(redis_server.url, {"1": OFFERED}, name="clean")
    assert report.ok, report.summary()
    assert (report.offered, report.persisted) == (40, 40)


@pytest.mark.integration
async def test_planted_loss_duplicate_reorder_and_unexpected_are_found(redis_server, redis_client):
    events = list(OFFERED)
    await write_events(redis_client, events[:10])  # events[10] and [11] are lost
    await write_events(redis_client, events[12:15])
    await redis_client("XADD", keys(1).events, f"{events[14][0]}-1", "data", events[14][1])  # duplicate
    # reordered: event 16's data under 15's id and the other way round
    await redis_client("XADD", keys(1).events, f"{events[15][0]}-0", "data", events[16][1])
    await redis_client("XADD", keys(1).events, f"{events[16][0]}-0", "data", events[15][1])
    await write_events(redis_client, events[17:], cursor=events[-1][0])
    await redis_client("XADD", keys(1).events, f"{events[-1][0] + 1}-0", "data", b"not a hub event")  # unexpected
    report = await check_run(redis_server.url, {"1": OFFERED})
    (partition,) = report.partitions
    assert (partition.lost, partition.duplicated, partition.out_of_order, partition.unexpected) == (2, 1, 1, 1)
    assert partition.wrong_id == 2
    assert not report.ok
    assert "FAIL" in report.table_row()


@pytest.mark.integration
async def test_a_cursor_regression_during_the_run_is_found(redis_server, redis_client):
    await write_events(redis_client, OFFERED, cursor=OFFERED[20][0])
    sampler = RunSampler(redis_server.url, ["1"], interval=0.002)
    async with trio.open_nursery() as nursery:
        await nursery.start(sampler.run)
        for position in (OFFERED[30][0], OFFERED[25][0], OFFERED[-1][0]):  # 30 -> 25 goes back
            await redis_client("HSET", keys(1).cursor, "position", position)
            await wait_for(lambda position=position: sampler.samples[-1].cursors[0] == position, timeout=2, what=f"cursor {position} sampled")
        nursery.cancel_scope.cancel()
    report = await check_run(redis_server.url, {"1": OFFERED}, sampler=sampler)
    assert report.partitions[0].cursor_regressions == 1
    assert report.partitions[0].lost == 0 and not report.ok


# -- end to end -----------------------------------------------------------------------------------


@pytest.mark.integration
async def test_smoke_hub_resets_and_a_redis_hang_lose_and_duplicate_nothing(redis_server, asyncio_loop):
    sim_config = SnapchainSimConfig(shards=2, seed=77, rate=800, history=200, total=4000)
    offered = offered_from_config(sim_config, [1, 2])
    schedule = Schedule(
        seed=1,
        faults=[
            TimedFault(target="hub_link", kind="reset_peer", start=0.8, duration=0.1),
            TimedFault(target="redis_link", kind="timeout", start=1.6, duration=1.0),  # hang: no close
            TimedFault(target="hub_link", kind="reset_peer", start=3.0, duration=0.1),
        ],
    )
    async with in_process_sim(sim_config) as (sim, sim_url):
        hub_port = int(sim_url.rsplit(":", 1)[1])
        async with open_proxy("127.0.0.1", hub_port, seed=1) as hub_link, \
                open_proxy("127.0.0.1", redis_server.port, seed=2) as redis_link:  # fmt: skip
            config = e2e_config(redis_link.redis_url, hub_link.http_url)
            sampler = RunSampler(redis_server.url, ["1", "2"], pid=os.getpid)
            async with trio.open_nursery() as sampling:
                await sampling.start(sampler.run)
                async with running_service(config) as (service, _):
                    targets = Targets(hub_link=hub_link, redis_link=redis_link, hub=InProcessHub(sim))
                    records = await run_schedule(schedule, targets)
                    last = {p: events[-1][0] for p, events in offered.items()}
                    await wait_for(
                        lambda: all(v.sink.cursor == last[v.name.split("/")[1]] for v in service.partitions),
                        timeout=20, what="every offered event to be persisted",
                    )
                    root = service.root.statistics()
                    restarts = root.restarts + sum(c.restarts for c in root.children)
                    reconnects = sum(v.source.reconnects for v in service.partitions)
                sampling.cancel_scope.cancel()
            hub_cuts = hub_link.statistics().cut
    report = await check_run(
        redis_server.url, offered, name="smoke", sampler=sampler, records=records,
        restarts=restarts, reconnects=reconnects, schedule=schedule.to_json(),
    )  # fmt: skip
    print("\n" + report.summary())
    assert report.ok, report.summary()
    assert report.lost == report.duplicated == report.out_of_order == 0
    assert report.persisted == 8000
    assert hub_cuts >= 4, "both resets must have cut both shards' streams"
    assert reconnects >= 4
    assert len(report.faults) == 3
    assert all(f.recovery_s is not None and f.recovery_s < 5.0 for f in report.faults), report.summary()
    redis_hang = report.faults[1]
    assert redis_hang.fault.startswith("redis_link:timeout")
    assert redis_hang.rate_after > 0
    assert report.rss_peak_kb is not None and report.samples > 100


@pytest.mark.integration
async def test_process_faults_weir_kill_and_freeze_redis_kill_hub_drop_lose_and_duplicate_nothing(redis_server, tmp_path):
    sim_config = SnapchainSimConfig(shards=2, seed=78, rate=1000, history=300, total=7000)
    offered = offered_from_config(sim_config, [1, 2])
    schedule = Schedule(
        faults=[
            TimedFault(target="weir", kind="kill", start=1.5, duration=0.3),
            TimedFault(target="redis", kind="kill", start=2.5, duration=0.3),
            TimedFault(target="weir", kind="pause", start=3.3, duration=0.3),
            TimedFault(target="hub", kind="drop_streams", start=3.9, duration=0.0),
        ],
    )
    async with open_snapchain_sim(sim_config) as sim:
        args = weir_run_args(
            redis_server.url, sim.url, "farcaster.start=oldest", "farcaster.shards=1,2", "farcaster.idle_timeout=5",
            "supervision.backoff_initial=0.01", "supervision.backoff_max=0.2", "supervision.breaker_reset=0.2",
            "redis.socket_timeout=1",
        )  # fmt: skip
        async with open_weir_process(args, log_path=tmp_path / "weir.log") as weir:
            sampler = RunSampler(redis_server.url, ["1", "2"], pid=lambda: weir.pid)
            async with trio.open_nursery() as sampling:
                await sampling.start(sampler.run)
                await wait_for(lambda: sampler.samples[-1].persisted > 0, timeout=20, what="weir to start persisting")
                targets = Targets(weir=weir, redis=redis_server, hub=SimProcessHub(sim.pid))
                records = await run_schedule(schedule, targets)
                last = tuple(offered[p][-1][0] for p in ("1", "2"))
                await wait_for(lambda: sampler.samples[-1].cursors == last, timeout=20, what="every event persisted")
                sampling.cancel_scope.cancel()
            assert await weir.terminate() == 0
    supervisor_restarts, reconnects = restarts_from_log(weir.log_text())
    report = await check_run(
        redis_server.url, offered, name="processes", sampler=sampler, records=records,
        restarts=weir.starts - 1 + supervisor_restarts, reconnects=reconnects, schedule=schedule.to_json(),
    )  # fmt: skip
    print("\n" + report.summary())
    assert report.ok, report.summary() + "\n" + weir.log_text()[-3000:]
    assert weir.starts == 2
    assert reconnects >= 2  # the dropped streams (and the frozen process's) were resumed
    assert all(f.recovery_s is not None for f in report.faults[:3]), report.summary()
