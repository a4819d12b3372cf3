"""The chaos suite (chaos/scenarios.py) in the test run: one test per named scenario, plus generated schedules.

Each scenario runs for real — redis-server, the Snapchain simulator and ``weir run`` as separate
processes, fault proxies on both links — and fails on any lost, unexpected, duplicated or
out-of-order event, a cursor regression, a missed recovery target, an unclean exit or (under a
stalled Redis) unbounded memory. ``weir chaos`` runs the same scenarios and prints the table;
docs/resilience.md has the figures.
"""

from __future__ import annotations

import pytest

from weir.chaos.suite import load_registry, random_scenarios, run_scenario

REGISTRY = load_registry()
RANDOM_SEED = 20251123
RANDOM_COUNT = 2


def _explain(result) -> str:  # type: ignore[no-untyped-def]
    tail = ""
    try:
        with open(result.log_path, errors="replace") as f:
            tail = "".join(f.readlines()[-15:])
    except OSError:
        pass
    return f"{result.summary()}\n--- end of weir's log ---\n{tail}"


@pytest.mark.integration
@pytest.mark.parametrize("name", list(REGISTRY))
async def test_scenario(name, tmp_path):
    result = await run_scenario(REGISTRY[name], tmp_path)
    print("\n" + result.summary())
    report = result.report
    assert report.lost == 0 and report.unexpected == 0, _explain(result)
    assert report.duplicated == 0 and report.out_of_order == 0, _explain(result)
    assert result.ok, _explain(result)
    assert report.persisted == report.offered, _explain(result)  # no dead letters in these runs


@pytest.mark.integration
async def test_generated_schedules(tmp_path):
    scenarios = random_scenarios(RANDOM_COUNT, RANDOM_SEED)
    assert len(scenarios) == RANDOM_COUNT
    failures = []
    for scenario in scenarios:
        result = await run_scenario(scenario, tmp_path / scenario.name)
        print("\n" + result.summary())
        if not result.ok:
            failures.append(f"{_explain(result)}\nreplay: weir chaos --schedule '{scenario.schedule.to_json()}'")
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
