"""The checker: pure comparisons, planted faults in a real Redis, and one end-to-end chaos smoke run.

The smoke run: weir (in-process ``serve``) → proxy → simulator, and weir → proxy → redis-server;
the hub link is reset twice and the Redis link hangs for 1 s mid-run; the checker must find
nothing lost, duplicated or out of order, and report a recovery time for each fault.
"""

from __future__ import annotations

import itertools
import os
import time

import attrs
import pytest
import trio
from helpers import (
    capture_json_logs,
    e2e_config,
    in_process_sim,
    keys,
    running_service,
    wait_for,
)

from weir.chaos.checker import (
    RunReport,
    RunSampler,
    Sample,
    SupervisionLogEntry,
    check_run,
    compare_partition,
    count_by_level,
    cursor_regressions,
    fault_report,
    format_restarts,
    on_trio_clock,
    restarts_from_log,
    rollback_samples,
    rss_growth,
    supervision_from_log,
    supervisor_level,
)
from weir.chaos.farcaster import offered_from_config
from weir.chaos.processes import (
    InProcessHub,
    SimProcessHub,
    WeirProcess,
    open_weir_process,
    weir_run_args,
)
from weir.chaos.proxy import open_proxy
from weir.chaos.schedule import FaultRecord, Schedule, Targets, TimedFault, run_schedule
from weir.sim.farcaster_data import SnapchainSimConfig
from weir.sim.process import open_snapchain_sim
from weir.supervision import ChildSpec, Strategy, Supervisor, SupervisorEscalation

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


def test_positions_are_the_sources_own_with_a_sub_and_a_final_cursor_it_names():
    """Not only Snapchain ids: several entries per position (a commit's ops, a block's logs) at
    ``<position>-<sub>``, and a drain that leaves the cursor past the last event (a block without logs)."""
    offered = [(1_700_000_000_000_001, 0, b"op a"), (1_700_000_000_000_001, 1, b"op b"), (1_700_000_000_000_007, 0, b"op c")]
    entries = [(b"1700000000000001-0", {b"data": b"op a"}), (b"1700000000000001-1", {b"data": b"op b"}),
               (b"1700000000000007-0", {b"data": b"op c"})]
    final = 1_700_000_000_000_009
    assert compare_partition("relay", offered, entries, final_cursor=final, expected_cursor=final).ok
    assert compare_partition("relay", offered, entries, final_cursor=final).cursor_mismatch  # default: the last event
    swapped = [entries[1], entries[0], entries[2]]
    report = compare_partition("relay", offered, swapped, final_cursor=final, expected_cursor=final)
    assert (report.out_of_order, report.wrong_id) == (1, 0)
    renumbered = [(b"1700000000000001-0", {b"data": b"op a"}), (b"1700000000000001-2", {b"data": b"op b"}), entries[2]]
    assert compare_partition("relay", offered, renumbered, final_cursor=final, expected_cursor=final).wrong_id == 1


def test_dead_letters_account_for_offered_events():
    dead = [(b"1-0", {b"data": OFFERED[7][1]})]
    entries = [entry(i, p) for n, (i, p) in enumerate(OFFERED) if n != 7]
    report = compare_partition("1", OFFERED, entries, dead=dead, final_cursor=OFFERED[-1][0])
    assert report.ok and report.dead == 1


def test_cursor_regressions_and_a_vanished_cursor():
    assert cursor_regressions([None, None, 5, 5, 9, 12]) == 0
    assert cursor_regressions([5, 9, 7, 8, 12]) == 1
    assert cursor_regressions([5, 9, None, 9]) == 1


def test_a_cursor_going_down_around_a_redis_rollback_is_the_fault_not_a_regression():
    def sample(at: float, persisted: int, cursor: int) -> Sample:
        return Sample(at=at, lengths=(persisted,), cursors=(cursor,), rss_kb=None)

    samples = [sample(0.0, 10, 10), sample(1.0, 20, 20), sample(2.1, 12, 12), sample(2.5, 25, 25), sample(9.0, 5, 5)]
    rollback = FaultRecord(fault=TimedFault(target="redis", kind="rollback", start=0.5, duration=1.5),
                           applied_at=0.5, cleared_at=2.0)  # fmt: skip
    kill = FaultRecord(fault=TimedFault(target="redis", kind="kill", start=0.5, duration=1.5), applied_at=0.5, cleared_at=2.0)
    assert rollback_samples(samples, [rollback, kill], window=1.0) == {1, 2, 3}
    assert rollback_samples(samples, [kill], window=1.0) == set()
    cursors = [s.cursors[0] for s in samples]
    assert cursor_regressions(cursors, rolled_back={1, 2, 3}) == 1  # the drop at 9.0 s is outside it
    assert cursor_regressions(cursors) == 2
    # recovered = the stream holds more than the most it held before the fault cleared (20, not 12)
    report = fault_report(rollback, samples, origin=0.0)
    assert report.recovery_s == pytest.approx(0.5)


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
        "WARNING weir.actors.farcaster: shard 2: stream from http://x:1 did not open (refused); reconnecting in 0.01s from event 7\n"
    )
    assert restarts_from_log(text) == (1, 3)


def test_report_row_and_verdict():
    clean = compare_partition("1", OFFERED, [entry(i, p) for i, p in OFFERED], final_cursor=OFFERED[-1][0])
    report = RunReport(name="smoke", partitions=(clean,), restarts=2, rss_peak_kb=80 * 1024)
    row = report.table_row()
    assert row.startswith("| smoke | 40 | 40 | 0 | 0 | 0 | 0 | 0 |")
    assert "80 MiB" in row and row.endswith("| ok |")
    assert "| 2 |" in row  # only the total is known
    assert row.count("|") == RunReport.table_header().splitlines()[0].count("|")
    by = RunReport(name="by", partitions=(clean,), restarts=4,
                   restarts_by_supervisor={"farcaster/1": 2, "farcaster/2": 1, "process": 1})  # fmt: skip
    assert "| 4 (process 1, pipeline 3) |" in by.table_row()
    assert by.table_row().count("|") == RunReport.table_header().splitlines()[0].count("|")
    assert "restarts by supervisor: farcaster/1 2, farcaster/2 1, process 1" in by.summary()


# -- restarts by supervisor -----------------------------------------------------------------------


async def _supervision_json_log(autojump_clock) -> str:
    """The JSON log of a real supervision tree: a pipeline whose child crashes until the pipeline
    gives up, then the root restarts the pipeline (and it gives up again: the root escalates)."""

    async def crashing(stopping, *, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        raise RuntimeError("boom")

    def pipeline() -> Supervisor:
        return Supervisor("farcaster/1", [ChildSpec(name="farcaster/1/source", target=crashing)],
                          strategy=Strategy.ONE_FOR_ALL, max_restarts=2, period=60.0)  # fmt: skip

    async def run_pipeline(stopping, *, task_status=trio.TASK_STATUS_IGNORED):
        await pipeline().run(stopping, task_status=task_status)

    root = Supervisor("root", [ChildSpec(name="farcaster/1", target=run_pipeline)], strategy=Strategy.ONE_FOR_ONE,
                      max_restarts=1, period=60.0)  # fmt: skip
    with capture_json_logs() as logs, pytest.raises(SupervisorEscalation):
        await root.run()
    return logs.text()


async def test_restarts_by_supervisor_from_a_real_supervision_trees_json_log(autojump_clock):
    text = await _supervision_json_log(autojump_clock)
    entries = supervision_from_log("not json\n" + text + "{broken json\n")
    restarts = [(e.supervisor, e.child) for e in entries if e.kind == "restart"]
    # two pipeline incarnations, each restarting its source twice before giving up; the root
    # restarts the pipeline once, then gives up itself
    assert restarts.count(("farcaster/1", "farcaster/1/source")) == 4
    assert restarts.count(("root", "farcaster/1")) == 1
    assert len(restarts) == 5
    escalations = [e.supervisor for e in entries if e.kind == "escalation"]
    assert escalations == ["farcaster/1", "farcaster/1", "root"]
    assert all(e.ts is not None and abs(e.ts - time.time()) < 60 for e in entries)  # wall-clock time of the line
    assert restarts_from_log(text)[0] == 5  # the plain count agrees


def test_restarts_by_supervisor_from_text_lines():
    text = (
        "12:00:01 WARNING weir.supervision: supervisor farcaster/2: child farcaster/2/persist restarting "
        "(strategy=one_for_all error=RuntimeError('x') delay=0.010s restarts_in_period=1)\n"
        "12:00:02 ERROR   weir.supervision: supervisor farcaster/2: child farcaster/2/persist escalated "
        "(strategy=one_for_all restarts_in_period=6)\n"
        "12:00:02 WARNING weir.supervision: supervisor root: child farcaster/2 restarting (strategy=one_for_one)\n"
        "12:00:03 INFO    weir.supervision: supervisor root: child farcaster/2 started (strategy=one_for_one)\n"
    )
    assert supervision_from_log(text) == [
        SupervisionLogEntry(kind="restart", supervisor="farcaster/2", child="farcaster/2/persist"),
        SupervisionLogEntry(kind="escalation", supervisor="farcaster/2", child="farcaster/2/persist"),
        SupervisionLogEntry(kind="restart", supervisor="root", child="farcaster/2"),
    ]


def test_levels_and_the_restarts_cell():
    assert [supervisor_level(n) for n in ("root", "farcaster/1", "ethereum/mainnet", "process")] == [
        "root", "pipeline", "pipeline", "process"]
    levels = count_by_level({"farcaster/1": 2, "farcaster/2": 1, "root": 1, "process": 2, "idle/3": 0})
    assert list(levels.items()) == [("process", 2), ("root", 1), ("pipeline", 3)]
    assert format_restarts(6, levels) == "6 (process 2, root 1, pipeline 3)"
    assert format_restarts(0, {}) == "0"


# -- memory per fault -----------------------------------------------------------------------------


def rss_samples(points: list[tuple[float, int | None, int | None]]) -> list[Sample]:
    """(time, rss kB, pid) -> samples (persisted count = 10 × time, for the recovery measure)."""
    return [Sample(at=t, lengths=(int(t * 10),), cursors=(int(t * 10),), rss_kb=rss, pid=pid) for t, rss, pid in points]


def test_rss_growth_of_the_process_that_lived_through_the_span():
    samples = rss_samples([(0.0, 60_000, 7), (0.5, 61_000, 7), (1.0, 62_000, 7), (1.5, 70_000, 7),
                           (2.0, 65_000, 7), (3.0, 90_000, 7)])  # fmt: skip
    growth = rss_growth(samples, 0.6, 2.0)
    assert (growth.before_kb, growth.peak_kb, growth.growth_kb) == (61_000, 70_000, 9_000)  # 3.0 is outside
    # shrinking is growth 0 (the peak is never below where it started)
    assert rss_growth(rss_samples([(0.0, 60_000, 7), (1.0, 50_000, 7)]), 0.0, 1.0).growth_kb == 0


def test_rss_growth_ignores_a_process_started_during_the_span():
    samples = rss_samples([(0.0, 64_000, 7), (1.0, 66_000, 7), (1.2, None, None), (1.6, 20_000, 8), (2.0, 70_000, 8)])
    growth = rss_growth(samples, 0.5, 2.5)  # weir (pid 7) killed at ~1.1 and started again (pid 8)
    assert (growth.before_kb, growth.peak_kb, growth.growth_kb) == (64_000, 66_000, 2_000)
    # weir not running when the span begins (a fault before start-up): no growth figure, just the peak
    late = rss_growth(samples, 1.3, 2.5)
    assert (late.before_kb, late.peak_kb, late.growth_kb) == (None, 70_000, None)
    assert rss_growth([], 0.0, 1.0).peak_kb is None


def test_fault_report_gives_rss_growth_and_restarts_by_supervisor_over_the_fault_span():
    samples = rss_samples([(t / 10, 60_000 + (5_000 if 12 <= t <= 16 else 0), 7) for t in range(40)])
    wall = 1_700_000_000.0  # the log's clock: wall = trio time + wall
    entries = [
        SupervisionLogEntry(kind="restart", supervisor="farcaster/1", child="farcaster/1/persist", ts=wall + 0.5),  # before
        SupervisionLogEntry(kind="restart", supervisor="farcaster/1", child="farcaster/1/persist", ts=wall + 1.3),
        SupervisionLogEntry(kind="restart", supervisor="root", child="farcaster/1", ts=wall + 1.85),  # in the settle time
        SupervisionLogEntry(kind="escalation", supervisor="farcaster/1", child="farcaster/1/persist", ts=wall + 1.8),
        SupervisionLogEntry(kind="restart", supervisor="farcaster/2", child="farcaster/2/source", ts=wall + 3.5),  # after
        SupervisionLogEntry(kind="restart", supervisor="farcaster/2", child="farcaster/2/source"),  # no time: not placed
    ]
    timed = on_trio_clock(entries, wall)
    assert len(timed) == 4
    record = FaultRecord(fault=TimedFault(target="redis", kind="kill", start=0, duration=0.4), applied_at=1.0, cleared_at=1.4)
    report = fault_report(record, samples, origin=0.0, window=0.5, supervision=timed)
    # span: applied (1.0) to 0.5 s after clearing or its recovery (0.1 s), whichever is later: 1.9
    assert report.restarts == {"farcaster/1": 1, "root": 1}
    assert (report.rss_before_kb, report.rss_peak_kb, report.rss_growth_kb) == (60_000, 65_000, 5_000)
    assert "RSS +4.9 MiB (58.6 → 63.5 MiB)" in RunReport(name="x", partitions=(), faults=(report,)).summary()
    # weir killed: a process restart in the fault's span, whatever the log says
    kill = FaultRecord(fault=TimedFault(target="weir", kind="kill", start=0, duration=0.2), applied_at=3.0, cleared_at=3.2)
    assert fault_report(kill, samples, origin=0.0, supervision=timed).restarts == {"farcaster/2": 1, "process": 1}
    pause = FaultRecord(fault=TimedFault(target="weir", kind="pause", start=0, duration=0.2), applied_at=3.0, cleared_at=3.2)
    assert "process" not in fault_report(pause, samples, origin=0.0, supervision=timed).restarts


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
    assert report.restarts == 0 and report.restarts_by_supervisor == {}


@pytest.mark.integration
async def test_check_run_groups_restarts_by_supervisor(redis_server, redis_client):
    await write_events(redis_client, OFFERED, cursor=OFFERED[-1][0])
    supervision = [
        SupervisionLogEntry(kind="restart", supervisor="farcaster/1", child="farcaster/1/persist"),
        SupervisionLogEntry(kind="restart", supervisor="farcaster/1", child="farcaster/1/source"),
        SupervisionLogEntry(kind="escalation", supervisor="farcaster/1", child="farcaster/1/source"),
        SupervisionLogEntry(kind="restart", supervisor="root", child="farcaster/1"),
    ]
    report = await check_run(redis_server.url, {"1": OFFERED}, supervision=supervision, process_restarts=2)
    assert report.restarts == 5
    assert report.restarts_by_supervisor == {"farcaster/1": 2, "process": 2, "root": 1}
    assert report.restarts_by_level == {"process": 2, "root": 1, "pipeline": 2}
    assert report.escalations_by_supervisor == {"farcaster/1": 1}
    assert "| 5 (process 2, root 1, pipeline 2) |" in report.table_row()


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
                    targets = Targets(redis_link=redis_link, network={"hub_link": hub_link, "hub": InProcessHub(sim)})
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


@attrs.define
class ProcessRun:
    weir: WeirProcess
    sampler: RunSampler
    records: list[FaultRecord]
    wall_offset: float
    metrics: str | None  # /metrics just before the drain, when a port was given


async def run_weir_process(
    sim_config, offered, redis_server, tmp_path, schedule, *settings: str, targets, metrics_port: int | None = None
) -> ProcessRun:
    """``weir run`` (a real process) against a simulator process and ``redis_server``, through
    ``schedule`` (``targets(weir, sim)`` gives its targets), until every offered event is
    persisted; then SIGTERM, which must drain and exit 0."""
    from weir.chaos.suite import _http_get

    metrics = None
    async with open_snapchain_sim(sim_config) as sim:
        args = weir_run_args(
            redis_server.url, sim.url, "farcaster.start=oldest", "farcaster.shards=1,2",
            "supervision.backoff_initial=0.01", "supervision.backoff_max=0.2", "supervision.breaker_reset=0.2",
            "redis.socket_timeout=1", *settings,
        )  # fmt: skip
        wall_offset = time.time() - trio.current_time()
        async with open_weir_process(args, log_path=tmp_path / "weir.log") as weir:
            sampler = RunSampler(redis_server.url, ["1", "2"], pid=lambda: weir.pid)
            async with trio.open_nursery() as sampling:
                await sampling.start(sampler.run)
                await wait_for(lambda: sampler.samples[-1].persisted > 0, timeout=20, what="weir to start persisting")
                records = await run_schedule(schedule, targets(weir, sim))
                last = tuple(offered[p][-1][0] for p in ("1", "2"))
                await wait_for(lambda: sampler.samples[-1].cursors == last, timeout=20, what="every event persisted")
                sampling.cancel_scope.cancel()
            if metrics_port is not None:
                metrics = await _http_get("127.0.0.1", metrics_port, "/metrics")
            assert await weir.terminate() == 0
    return ProcessRun(weir=weir, sampler=sampler, records=records, wall_offset=wall_offset, metrics=metrics)


@pytest.mark.integration
async def test_process_faults_weir_kill_and_freeze_redis_kill_hub_drop_lose_and_duplicate_nothing(
    durable_redis_server, tmp_path
):
    """Redis runs with appendfsync always, as in the chaos suite: with everysec its kill -9 may
    lose the last batches it acknowledged (CI did once: a slow fsync held them). weir then reads
    them again, but the cursor the sampler saw goes down, which this test counts as a regression;
    that case is the rollback test below."""
    redis_server = durable_redis_server
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
    run = await run_weir_process(
        sim_config, offered, redis_server, tmp_path, schedule, "farcaster.idle_timeout=5",
        targets=lambda weir, sim: Targets(weir=weir, redis=redis_server, network={"hub": SimProcessHub(sim.pid, sim.control)}),
    )  # fmt: skip
    weir, sampler, records, wall_offset = run.weir, run.sampler, run.records, run.wall_offset
    _, reconnects = restarts_from_log(weir.log_text())
    report = await check_run(
        redis_server.url, offered, name="processes", sampler=sampler, records=records,
        supervision=supervision_from_log(weir.log_text()), process_restarts=weir.starts - 1, wall_offset=wall_offset,
        reconnects=reconnects, schedule=schedule.to_json(),
    )  # fmt: skip
    print("\n" + report.summary())
    assert report.ok, report.summary() + "\n" + weir.log_text()[-3000:]
    assert weir.starts == 2
    assert reconnects >= 2  # the dropped streams (and the frozen process's) were resumed
    assert all(f.recovery_s is not None for f in report.faults[:3]), report.summary()
    # restarts by supervisor: weir's own restart (the kill) is the process level, in the kill's span
    assert report.restarts_by_supervisor.get("process") == 1
    assert report.restarts == sum(report.restarts_by_supervisor.values())
    assert "process 1" in report.table_row()
    kill, redis_kill, pause, _ = report.faults
    assert kill.restarts.get("process") == 1 and "process" not in redis_kill.restarts
    # memory per fault: measured across the Redis kill and the freeze (weir ran through both),
    # not across weir's own kill (the process that began it is gone)
    for fault in (redis_kill, pause):
        assert fault.rss_before_kb and fault.rss_peak_kb and fault.rss_growth_kb is not None, report.summary()
        assert 0 <= fault.rss_growth_kb < 64 * 1024, report.summary()


@pytest.mark.integration
async def test_redis_losing_acknowledged_writes_costs_a_pipeline_restart_and_not_one_event(redis_server, tmp_path):
    """Redis is killed and started on its state of 1 s earlier (a failover to a lagging replica;
    a restart while a slow fsync held its last writes): the batches it acknowledged in that second
    are gone, with their cursor. weir's next write (or idle check) finds the stored cursor below
    what it had written; each pipeline restarts from what Redis holds and reads those events from
    the network again. Without that check weir wrote on and the lost second stayed lost."""
    sim_config = SnapchainSimConfig(shards=2, seed=81, rate=1000, history=300, total=5000)
    offered = offered_from_config(sim_config, [1, 2])
    from weir.chaos.suite import _free_port, _metric_sum

    schedule = Schedule(faults=[TimedFault(target="redis", kind="rollback", start=0.5, duration=1.0)])
    metrics_port = _free_port()
    run = await run_weir_process(
        sim_config, offered, redis_server, tmp_path, schedule, f"metrics.port={metrics_port}",
        targets=lambda weir, sim: Targets(redis=redis_server), metrics_port=metrics_port,
    )  # fmt: skip
    weir, sampler, records, wall_offset, metrics = run.weir, run.sampler, run.records, run.wall_offset, run.metrics
    # one rollback, seen once by each partition's pipeline
    assert [_metric_sum(metrics, f'weir_sink_rollbacks_total{{partition="{p}",source="farcaster"}}') for p in "12"] == [1, 1]
    report = await check_run(
        redis_server.url, offered, name="rollback", sampler=sampler, records=records,
        supervision=supervision_from_log(weir.log_text()), wall_offset=wall_offset, schedule=schedule.to_json(),
    )  # fmt: skip
    print("\n" + report.summary())
    assert report.ok, report.summary() + "\n" + weir.log_text()[-3000:]
    # Redis really lost acknowledged events: the stream was shorter after the rollback than before.
    shrank = [(a.persisted, b.persisted) for a, b in itertools.pairwise(sampler.samples) if b.persisted < a.persisted]
    assert shrank, "the rollback lost nothing: the test proves nothing"
    # Each pipeline noticed and restarted (one_for_all) instead of writing past the gap.
    log_text = weir.log_text()
    assert "lost acknowledged writes" in log_text
    restarted = {e.supervisor for e in supervision_from_log(log_text) if e.kind == "restart"}
    assert restarted == {"farcaster/1", "farcaster/2"}, report.summary()
    (fault,) = report.faults
    assert fault.recovery_s is not None and fault.recovery_s < 5, report.summary()


@pytest.mark.integration
async def test_pipeline_restarts_of_a_real_weir_process_are_counted_by_supervisor_in_the_fault(redis_server, tmp_path, asyncio_loop):
    """The node refuses with PERMISSION_DENIED for 0.6 s (not a network fault: the source crashes
    and its pipeline supervisor restarts it): the restarts found in weir's JSON log are the ones
    its /metrics counts, per pipeline, and they fall in that fault's span."""
    from weir.chaos.suite import _free_port, _http_get, _metric_sum

    sim_config = SnapchainSimConfig(shards=2, seed=79, rate=1000, history=300, total=3300)
    offered = offered_from_config(sim_config, [1, 2])
    schedule = Schedule(faults=[
        TimedFault(target="hub", kind="error", start=0.5, duration=0.6, params={"status": "PERMISSION_DENIED"}),
        TimedFault(target="hub", kind="drop_streams", start=0.55, duration=0.0),  # the open streams end, reconnect: refused
    ])  # fmt: skip
    metrics_port = _free_port()
    async with in_process_sim(sim_config) as (sim, sim_url):
        args = weir_run_args(
            redis_server.url, sim_url, "farcaster.start=oldest", "farcaster.shards=1,2", "farcaster.idle_timeout=5",
            "supervision.backoff_initial=0.05", "supervision.backoff_max=0.2", "supervision.breaker_reset=0.2",
            "supervision.max_restarts=100", f"metrics.port={metrics_port}",
        ) + ["--log-format", "json"]  # fmt: skip
        wall_offset = time.time() - trio.current_time()
        async with open_weir_process(args, log_path=tmp_path / "weir.log") as weir:
            sampler = RunSampler(redis_server.url, ["1", "2"], pid=lambda: weir.pid)
            async with trio.open_nursery() as sampling:
                await sampling.start(sampler.run)
                await wait_for(lambda: sampler.samples[-1].persisted > 0, timeout=20, what="weir to start persisting")
                records = await run_schedule(schedule, Targets(network={"hub": InProcessHub(sim)}))
                last = tuple(offered[p][-1][0] for p in ("1", "2"))
                await wait_for(lambda: sampler.samples[-1].cursors == last, timeout=20, what="every event persisted")
                sampling.cancel_scope.cancel()
            text = await _http_get("127.0.0.1", metrics_port, "/metrics")
            counted = {f"farcaster/{shard}": _metric_sum(text, f'weir_supervisor_restarts_total{{supervisor="farcaster/{shard}"}}')
                       for shard in (1, 2)}  # fmt: skip
            counted["root"] = _metric_sum(text, 'weir_supervisor_restarts_total{supervisor="root"}')
            assert await weir.terminate() == 0
    log_text = weir.log_text()
    report = await check_run(
        redis_server.url, offered, name="refused", sampler=sampler, records=records,
        supervision=supervision_from_log(log_text), process_restarts=weir.starts - 1, wall_offset=wall_offset,
        schedule=schedule.to_json(),
    )  # fmt: skip
    print("\n" + report.summary())
    assert report.ok, report.summary() + "\n" + log_text[-3000:]
    by = report.restarts_by_supervisor
    assert by.get("farcaster/1", 0) >= 1 and by.get("farcaster/2", 0) >= 1, report.summary()
    assert {name: by.get(name, 0) for name in counted} == counted, "the log and /metrics disagree"
    assert report.restarts_by_level == {"pipeline": by["farcaster/1"] + by["farcaster/2"]}
    assert report.restarts == sum(by.values())
    assert f"| {report.restarts} (pipeline {report.restarts}) |" in report.table_row()
    refused = next(f for f in report.faults if f.fault.startswith("hub:error"))
    assert refused.restarts == dict(by), "every restart happened while the node refused, or recovering from it"
