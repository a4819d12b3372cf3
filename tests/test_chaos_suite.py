"""The chaos suite (the built-in scenarios, weir/chaos/scenarios/) in the test run: one test per named scenario, plus generated schedules.

Each scenario runs for real — redis-server, the Snapchain simulator and ``weir run`` as separate
processes, fault proxies on both links — and fails on any lost, unexpected, duplicated or
out-of-order event, a cursor regression, a missed recovery target, an unclean exit or (under a
stalled Redis) unbounded memory. The delivery scenarios also run ``weir deliver`` (and a
nats-server, or a webhook receiver) and fail on any entry missing from the target, received twice
(webhooks: under another idempotency key), left pending, or a webhook request badly signed.
``weir chaos`` runs the same scenarios and prints the table;
docs/resilience.md has the figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from weir.chaos.delivery_check import EXACTLY_ONCE
from weir.chaos.sources import SOURCES
from weir.chaos.suite import load_registry, random_scenarios, run_scenario

REGISTRY = load_registry()
RANDOM_SEED = 20251123


def _explain(result) -> str:  # type: ignore[no-untyped-def]
    text = result.summary()
    logs = [("weir", Path(result.log_path))]
    if result.delivery is not None:
        logs.append(("weir deliver", Path(result.log_path).with_name("deliver.log")))
    for name, path in logs:
        try:
            with open(path, errors="replace") as f:
                text += f"\n--- end of {name}'s log ---\n" + "".join(f.readlines()[-15:])
        except OSError:
            pass
    return text


@pytest.mark.integration
@pytest.mark.parametrize("name", list(REGISTRY))
async def test_scenario(name, tmp_path):
    result = await run_scenario(REGISTRY[name], tmp_path)
    print("\n" + result.summary())
    report = result.report
    assert report.lost == 0 and report.unexpected == 0, _explain(result)
    assert report.duplicated == 0 and report.out_of_order == 0, _explain(result)
    assert result.ok, _explain(result)
    # no dead letters in these runs (with nothing lost, duplicated or unexpected, the stream then
    # holds exactly what was offered; a chain's also holds its retractions and what they undid)
    assert not any(p.dead for p in report.partitions), _explain(result)
    assert report.persisted >= report.offered, _explain(result)
    # restarts by supervisor: weir's own restarts are the process level, one per kill or term
    scenario = REGISTRY[name]
    weir_restarts = sum(1 for f in scenario.schedule.faults if f.target == "weir" and f.kind in ("kill", "term"))
    assert report.restarts_by_supervisor.get("process", 0) == weir_restarts, _explain(result)
    assert report.restarts == sum(report.restarts_by_supervisor.values())
    # delivery: every entry of the streams in the target, each once (after JetStream's deduplication)
    # or, for an at-least-once target, at least once under a stable key
    if scenario.delivery is not None:
        delivery = result.delivery
        assert delivery is not None and delivery.ok, _explain(result)
        assert delivery.total("entries") == report.persisted, _explain(result)
        if delivery.guarantee == EXACTLY_ONCE:
            assert delivery.total("received") == delivery.total("entries"), _explain(result)
        else:  # at least once (webhooks): repeats allowed, under the same key (the checker's unstable_keys)
            assert delivery.total("received") >= delivery.total("entries"), _explain(result)
        kills = [f for f in scenario.schedule.faults if f.target == "deliver" and f.kind == "kill"]
        assert len(result.measures["deliver_kills_held"]) == len(kills), _explain(result)
        assert all(held > 0 for held in result.measures["deliver_kills_held"]), _explain(result)
    # memory per fault window: measured wherever weir ran through the window's start
    for window in result.windows:
        if not scenario.before_start and not any(f.startswith("weir:") for f in window.faults):
            assert window.rss_growth_kb is not None and window.memory_bounded, _explain(result)


@pytest.mark.integration
@pytest.mark.parametrize("source", list(SOURCES))  # one schedule drawn from each source's fault kinds
async def test_generated_schedules(tmp_path, source):
    scenarios = random_scenarios(1, RANDOM_SEED, SOURCES[source])
    assert len(scenarios) == 1
    failures = []
    for scenario in scenarios:
        result = await run_scenario(scenario, tmp_path / scenario.name)
        print("\n" + result.summary())
        if not result.ok:
            failures.append(f"{_explain(result)}\nreplay: weir chaos --source {source} --schedule '{scenario.schedule.to_json()}'")
    assert not failures, "\n\n".join(failures)


def test_fault_windows_group_overlaps_and_wait_for_disruptive_faults():
    from weir.chaos.checker import Sample
    from weir.chaos.schedule import FaultRecord, TimedFault
    from weir.chaos.suite import fault_windows

    def record(target, kind, applied, cleared, **params):  # type: ignore[no-untyped-def]
        return FaultRecord(fault=TimedFault(target=target, kind=kind, start=0, duration=1, params=params),
                           applied_at=applied, cleared_at=cleared)

    records = [
        record("redis_link", "latency", 0.0, 2.0, ms=5),  # background shaping: does not swallow the kill
        record("weir", "kill", 1.0, 1.2),
        record("hub_link", "slicer", 2.5, 4.0),  # ends while Redis is still down: judged from 5.5
        record("redis", "kill", 3.9, 5.5),
    ]
    samples = [Sample(at=t / 10, lengths=(t,), cursors=(t,), rss_kb=None) for t in range(100)]
    windows = fault_windows(records, samples, origin=0.0)
    by_first = {w.faults[0].split("@")[0]: w for w in windows}
    assert by_first["weir:kill"].end == 1.2 and by_first["weir:kill"].target_s == 5.0
    slicer = next(w for w in windows if w.faults[0].startswith("hub_link:slicer"))
    assert slicer.end == 5.5 and slicer.target_s == 5.0  # extended to the Redis kill's end
    assert by_first["redis_link:latency(ms=5)"].end == 2.0
    assert all(w.recovery_s is not None and w.recovery_s <= 0.1 + 1e-9 for w in windows)


def test_windows_report_rss_growth_and_restarts_by_supervisor_and_the_result_surfaces_them():
    import json

    from weir.chaos.checker import RunReport, Sample, SupervisionLogEntry, compare_partition
    from weir.chaos.schedule import FaultRecord, TimedFault
    from weir.chaos.suite import ScenarioResult, fault_windows

    def record(target, kind, applied, cleared):  # type: ignore[no-untyped-def]
        return FaultRecord(fault=TimedFault(target=target, kind=kind, start=0, duration=1), applied_at=applied, cleared_at=cleared)

    def rss(t: int) -> tuple[int | None, int | None]:
        """weir pid 7 grows 6 MiB during the Redis kill (1.0–1.5 s); killed at 3.0, pid 8 from 3.3."""
        if t <= 30:
            return 60_000 + (6_144 if 11 <= t <= 15 else 0), 7
        return (None, None) if t < 33 else (30_000 + 1_000 * (t - 33), 8)

    samples = [Sample(at=t / 10, lengths=(t,), cursors=(t,), rss_kb=rss(t)[0], pid=rss(t)[1]) for t in range(60)]
    records = [record("redis", "kill", 1.0, 1.5), record("weir", "kill", 3.0, 3.2)]
    wall = 1_700_000_000.0
    supervision = [
        SupervisionLogEntry(kind="restart", supervisor="farcaster/1", child="farcaster/1/persist", ts=wall + 1.2),
        SupervisionLogEntry(kind="restart", supervisor="farcaster/2", child="farcaster/2/persist", ts=wall + 1.3),
        SupervisionLogEntry(kind="restart", supervisor="farcaster/2", child="farcaster/2/persist", ts=wall + 1.4),
        SupervisionLogEntry(kind="restart", supervisor="root", child="farcaster/2", ts=wall + 5.9),  # no window's span
    ]
    redis_kill, weir_kill = fault_windows(records, samples, 0.0, supervision=supervision, wall_offset=wall)
    assert redis_kill.restarts == {"farcaster/1": 1, "farcaster/2": 2}
    assert redis_kill.restarts_by_level == {"pipeline": 3}
    assert (redis_kill.rss_before_kb, redis_kill.rss_peak_kb, redis_kill.rss_growth_kb) == (60_000, 66_144, 6_144)
    assert weir_kill.restarts == {"process": 1}
    assert weir_kill.rss_growth_kb == 0  # pid 7 until its kill; pid 8's start-up is not growth
    # without the log's clock, restarts cannot be placed in windows (process restarts still are)
    assert fault_windows(records, samples, 0.0, supervision=supervision)[0].restarts == {}

    offered = [(1, b"a"), (2, b"b")]
    clean = compare_partition("1", offered, [(b"1-0", {b"data": b"a"}), (b"2-0", {b"data": b"b"})], final_cursor=2)
    report = RunReport(name="x", partitions=(clean,), restarts=5,
                       restarts_by_supervisor={"farcaster/1": 1, "farcaster/2": 2, "process": 1, "root": 1})  # fmt: skip
    result = ScenarioResult(scenario="x", label="two kills", report=report, windows=(redis_kill, weir_kill))
    header = ScenarioResult.table_header().splitlines()[0]
    for column in ("scenario", "faults", "offered", "persisted", "lost", "dup", "out of order", "recovery p50 / max", "restarts"):
        assert f" {column} |" in header
    row = result.table_row()
    assert "| 5 (process 1, root 1, pipeline 3) |" in row
    assert row.count("|") == header.count("|")
    summary = result.summary()
    assert "RSS +6.0 MiB (58.6 → 64.6 MiB); restarts 3 (pipeline 3)" in summary
    assert "restarts 1 (process 1)" in summary
    data = json.loads(json.dumps(result.to_dict()))  # JSON-ready as is
    assert data["restarts"] == 5
    assert data["restarts_by_supervisor"] == {"farcaster/1": 1, "farcaster/2": 2, "process": 1, "root": 1}
    assert data["restarts_by_level"] == {"process": 1, "root": 1, "pipeline": 3}
    assert data["rss_growth_max_kb"] == 6_144
    first = data["windows"][0]
    assert first["rss_growth_kb"] == 6_144 and first["rss_before_kb"] == 60_000
    assert first["restarts"] == {"farcaster/1": 1, "farcaster/2": 2} and first["restarts_by_level"] == {"pipeline": 3}


def test_a_window_whose_memory_grew_past_the_limit_fails_the_scenario():
    from weir.chaos.suite import RSS_WINDOW_GROWTH_LIMIT_KB, Window, judge_windows

    def window(growth, recovery=0.1):  # type: ignore[no-untyped-def]
        return Window(faults=("redis_link:timeout@1+30s",), start=1.0, end=31.0, recovery_s=recovery, target_s=5.0,
                      rss_before_kb=60_000, rss_peak_kb=None if growth is None else 60_000 + growth, rss_growth_kb=growth)

    assert judge_windows([window(0), window(RSS_WINDOW_GROWTH_LIMIT_KB), window(None)]) == []
    (problem,) = judge_windows([window(RSS_WINDOW_GROWTH_LIMIT_KB + 1)])
    assert problem.startswith("memory not bounded: weir's RSS grew 32.0 MiB over [redis_link:timeout@1+30s]")
    assert not window(RSS_WINDOW_GROWTH_LIMIT_KB + 1).memory_bounded
    assert window(RSS_WINDOW_GROWTH_LIMIT_KB + 1).to_dict()["memory_bounded"] is False
    (late,) = judge_windows([window(0, recovery=6.0)])
    assert late.startswith("recovery 6.00 s after [redis_link:timeout@1+30s] exceeds the 5 s target")


def test_a_run_whose_load_ended_before_its_last_ingestion_fault_cleared_fails():
    from weir.chaos.delivery import Delivery
    from weir.chaos.delivery_targets import PARQUET
    from weir.chaos.schedule import Schedule
    from weir.chaos.suite import Scenario, Window, judge_tail

    def window(fault, end, recovery):  # type: ignore[no-untyped-def]
        return Window(faults=(fault,), start=end - 1, end=end, recovery_s=recovery, target_s=5.0)

    plain = Scenario(name="s", label="s", schedule=Schedule())
    hang = window("redis_link:timeout@1+3s", 4.0, 0.2)
    assert judge_tail(plain, [window("weir:kill@0.5+0.2s", 0.7, None), hang]) == []  # only the last one counts
    (problem,) = judge_tail(plain, [hang, window("weir:kill@4+0.2s", 4.2, None)])
    assert problem.startswith("nothing was persisted after [weir:kill@4+0.2s] cleared: the load was over (tail 1 s)")
    delivering = Scenario(name="d", label="d", schedule=Schedule(), delivery=Delivery(target=PARQUET))
    assert judge_tail(delivering, [hang, window("deliver:kill@2+0.3s", 5.0, None)]) == []  # the delivery checker's
    assert judge_tail(Scenario(name="x", label="x", schedule=Schedule(), exits=3), [window("node:reorg@1+0s", 1, None)]) == []


def test_expectations_match_json_log_events_by_name_and_field():
    from weir.chaos.suite import unmet_expectations

    log_text = "\n".join([
        '{"event": "disconnect", "error": "IdleStream: no data for 1s"}',
        "plain text line from a library",
        '{"event": "sink_unavailable", "error": "timeout"',  # cut short by kill -9
        '{"event": "breaker_change", "state": "open"}',
    ])
    wanted = ("disconnect:error~IdleStream", "breaker_change:state~open", "disconnect:error~INTERNAL", "sink_unavailable")
    assert unmet_expectations(log_text, wanted) == ["disconnect:error~INTERNAL", "sink_unavailable"]


def test_escalations_and_unexpected_restarts_fail_a_scenario():
    from weir.chaos.checker import RunReport
    from weir.chaos.schedule import Schedule
    from weir.chaos.suite import Scenario, judge_supervision

    quiet = Scenario(name="s", label="s", schedule=Schedule(), max_restarts=0)
    clean = RunReport(name="s", partitions=(), restarts_by_supervisor={"process": 2})
    assert judge_supervision(quiet, clean) == []  # weir's own restarts are the harness's doing
    restarted = RunReport(name="s", partitions=(), restarts_by_supervisor={"farcaster/1": 1})
    assert "1 supervisor restarts (farcaster/1 1)" in judge_supervision(quiet, restarted)[0]
    escalated = RunReport(name="s", partitions=(), escalations_by_supervisor={"farcaster/1": 1})
    anything = Scenario(name="s", label="s", schedule=Schedule())
    assert "escalated" in judge_supervision(anything, escalated)[0]


def test_the_simulator_record_must_match_what_the_checker_regenerates():
    import hashlib

    from weir.chaos.farcaster import record_mismatches

    offered = {"1": [(10, b"a"), (11, b"b")]}
    record = {"1": {"ids": [10, 11], "sha256": hashlib.sha256(b"ab").hexdigest()}}
    assert record_mismatches(record, offered) == []
    assert "differ from position 1" in record_mismatches({"1": {**record["1"], "ids": [10, 12]}}, offered)[0]
    assert "other bytes" in record_mismatches({"1": {**record["1"], "sha256": "0" * 64}}, offered)[0]
    assert "recorded nothing" in record_mismatches({}, offered)[0]


def test_a_replayed_schedule_gets_the_same_simulated_data():
    from weir.chaos.schedule import Schedule
    from weir.chaos.suite import random_scenarios, schedule_scenario

    (generated,) = random_scenarios(1, 20251123)
    replayed = schedule_scenario(Schedule.from_json(generated.schedule.to_json()), "schedule-0")
    assert replayed.load() == generated.load() and replayed.source == generated.source
    assert replayed.source.offered(replayed.load()) == generated.source.offered(generated.load())


def test_weir_chaos_prints_the_table_and_exits_1_when_a_scenario_fails(monkeypatch, capsys, tmp_path):
    """The command's own logic (runs faked: the scenarios themselves are the tests above)."""
    import json

    import weir.chaos.suite as suite
    from weir import cli
    from weir.chaos.checker import PartitionReport, RunReport
    from weir.chaos.schedule import Schedule

    def result(name: str, lost: int) -> suite.ScenarioResult:
        partition = PartitionReport(partition="1", offered=10, persisted=10 - lost, lost=lost, final_cursor=9)
        return suite.ScenarioResult(scenario=name, label=f"{name} faults", report=RunReport(name=name, partitions=(partition,)))

    async def fake_run_suite(scenarios, workdir, *, on_result=None):  # type: ignore[no-untyped-def]
        results = [result(s.name, lost=3 if s.name == "b" else 0) for s in scenarios]
        for r in results:
            on_result(r)
        return results

    registry = {name: suite.Scenario(name=name, label=name, schedule=Schedule(seed=i)) for i, name in enumerate("ab")}
    monkeypatch.setattr(suite, "load_registry", lambda path=None: registry)
    monkeypatch.setattr(suite, "run_suite", fake_run_suite)
    assert cli.main(["chaos", "a", "b", "--json", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| a ") or line.startswith("| b ")]
    assert len(rows) == 2 and "FAIL" not in rows[0] and "| 3 |" in rows[1]
    assert "1/2 scenarios passed" in out and "FAILED b" in out and "replay: weir chaos b" in out
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is False
    assert cli.main(["chaos", "a"]) == 0


def test_the_in_flight_bound_follows_the_settings_and_the_pipeline_channels():
    from weir.actors.pipeline import FILTER_TO_BATCH, SOURCE_TO_FILTER
    from weir.chaos.backpressure import in_flight_bound

    chunks = 2 + SOURCE_TO_FILTER + FILTER_TO_BATCH  # the source's hand, the filter's, the channel slots
    assert in_flight_bound("farcaster", ("batch.max_events=200",)) == chunks * 512 + 2 * (199 + 512)
    # the last setting wins, as on weir's command line
    assert in_flight_bound("farcaster", ("farcaster.read_batch=100", "farcaster.read_batch=10")) == chunks * 10 + 2 * (499 + 10)
    assert in_flight_bound("ethereum", ()) is None


def test_a_source_holding_more_than_the_buffers_can_fails_the_stall_check():
    from weir.chaos.suite import MetricsSampler

    # (time, received, persisted, left the pipeline)
    points = [(0.0, 0, 0, 0), (1.0, 900, 100, 100), (2.0, 1200, 150, 250), (3.0, 1300, 900, 900)]
    metrics = MetricsSampler(port=0, points=points)
    assert metrics.peak_held(0.5, 2.5) == 950
    assert metrics.peak_held(3.5, 4.0) is None
    assert metrics.rate(1.0, 3.0, column=2) == 400  # the persist rate is of what was appended


def test_events_skipped_as_already_durable_are_not_held():
    """A write that timed out but landed is skipped by its retry: those events left the pipeline
    (session 9 counted ~500 per partition of them as held and could not find where)."""
    from weir.chaos.suite import held_counts

    text = """# HELP weir_events_received_total Events read.
# TYPE weir_events_received_total counter
weir_events_received_total{source="farcaster",partition="1"} 5000.0
weir_events_received_total{source="farcaster",partition="2"} 4000.0
weir_events_persisted_total{source="farcaster",partition="1"} 3000.0
weir_events_persisted_total{source="farcaster",partition="2"} 2500.0
weir_events_persisted_created{source="farcaster",partition="1"} 1.7e9
weir_events_skipped_total{source="farcaster",partition="1"} 600.0
weir_events_skipped_total{source="farcaster",partition="2"} 0.0
weir_events_dead_lettered_total{source="farcaster",partition="2"} 3.0
weir_events_filtered_total{source="farcaster",partition="1"} 7.0
weir_source_duplicates_total{source="farcaster",partition="2"} 2.0
"""
    received, persisted, left = held_counts(text)
    assert (received, persisted) == (9000, 5500)
    assert left == 5500 + 600 + 3 + 7 + 2
