"""The chaos suite's engine: run a named scenario end to end and judge it.

A :class:`~weir.chaos.scenario.Scenario` is a fault :class:`~weir.chaos.schedule.Schedule`, the
source it runs against (:class:`~weir.chaos.source.ChaosSource`), the load and the extra checks
that go with it; the named ones are the built-in :mod:`weir.chaos.scenarios` plus a user's file
(:func:`~weir.chaos.registry.load_registry`). One run (:func:`run_scenario`), production-shaped —
four processes and real sockets (here with the Farcaster source):

    python -m weir.sim snapchain ◀── hub_link proxy ◀── weir run (subprocess) ──▶ redis_link proxy ──▶ redis-server
                                                                 ▲                                        ▲
                             this process: proxies, schedule, RunSampler (direct) ────────────────────────┘

1. start redis-server (embedded binary, AOF on, ``appendfsync always``) and a proxy in front of
   it, the source's simulator and proxy (:meth:`ChaosSource.open`), and ``weir run`` through the
   proxies (what the source offers is computed in a thread meanwhile); every simulator holds its
   live phase until weir connects;
2. once weir persists (or at once, for a fault that must precede start-up) run the schedule;
3. wait for a full drain: every partition's durable cursor is the source's final cursor (polled,
   with a timeout — a hang fails the scenario);
4. SIGTERM weir (it must exit 0), let the source check its simulator (``RunningSource.finish``),
   then :func:`~weir.chaos.checker.check_run` compares Redis with what the source offered, and the
   recovery, memory and source-rate targets are judged.

Every fault window also reports weir's RSS growth over it (the process that was running when it
began, from just before it to ``WINDOW_SETTLE_S`` after it ends or its recovery) and the restarts
in it by supervisor (the ``restart`` events of weir's JSON log, and weir's own restarts as
``process``); the whole run's restarts are reported by supervisor too.

``weir chaos`` (:func:`main`) runs a list of them and prints the table; ``tests/test_chaos_suite.py``
runs each as a test.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from weir.chaos.backpressure import LEFT_THE_PIPELINE, in_flight_bound
from weir.chaos.checker import (
    RunReport,
    RunSampler,
    SupervisionLogEntry,
    check_run,
    count_by_level,
    describe_rss,
    format_restarts,
    on_trio_clock,
    process_restarted,
    restarts_from_log,
    restarts_in_span,
    rss_growth,
    supervision_from_log,
)
from weir.chaos.delivery import RunningDelivery, open_delivery
from weir.chaos.delivery_check import DeliveryReport
from weir.chaos.farcaster import FARCASTER
from weir.chaos.processes import WeirProcess, weir_run_command
from weir.chaos.proxy import open_proxy
from weir.chaos.registry import ScenariosError, load_registry
from weir.chaos.scenario import Scenario
from weir.chaos.schedule import FaultRecord, Schedule, Targets, random_schedules, run_schedule
from weir.chaos.source import ChaosSource
from weir.chaos.sources import SOURCES, source_key, source_of
from weir.chaos.waiting import wait_until
from weir.sinks.embedded_redis import RedisServerConfig, open_embedded_redis

__all__ = [
    "BASE_SETTINGS",
    "RECOVERY_TARGET_NETWORK",
    "RECOVERY_TARGET_REDIS",
    "Scenario",
    "ScenarioResult",
    "fault_windows",
    "judge_windows",
    "load_registry",
    "main",
    "random_scenarios",
    "run_scenario",
    "run_suite",
]

log = logging.getLogger("weir.chaos.suite")

#: Recovery targets (seconds from the fault clearing to the first newly persisted event).
RECOVERY_TARGET_NETWORK = 2.0  # a fault on the source's side (its link, its simulator)
RECOVERY_TARGET_REDIS = 5.0  # Redis returns (its link or its process), or weir's own process restarts
#: Memory bound under a stalled Redis: weir's RSS may not grow by more than this from the first to
#: the second half of the stall (it must not grow with the stall's length).
RSS_GROWTH_LIMIT_KB = 8 * 1024
#: A fault window's span, for its RSS growth and restarts, runs this long after the window ends
#: (or until its recovery, if later): the catch-up after a fault is part of what it causes.
WINDOW_SETTLE_S = 1.0
#: Memory bound over any fault window: weir's peak RSS in the window's span may exceed its RSS
#: just before the window by at most this (what was measured: at most ~8 MiB, under the 8 s slow
#: Redis; buffers are bounded, so a fault's length must not show in memory).
RSS_WINDOW_GROWTH_LIMIT_KB = 32 * 1024

#: weir's settings in every scenario, whatever the source (tuned for fast recovery; docs/resilience.md
#: says why); the source adds its own (:attr:`ChaosSource.settings`).
BASE_SETTINGS: tuple[str, ...] = (
    "redis.socket_timeout=1",  # a hung Redis is noticed after 1 s (default 5 s)
    "supervision.backoff_initial=0.05",
    "supervision.backoff_max=0.5",  # default 10 s: recovery after a long outage would be up to that
    "supervision.breaker_reset=0.5",
    "supervision.breaker_reset_max=1",  # default 30 s: after a long outage the next trial is up to that far away
)

_PROCESS_TARGETS = ("redis", "redis_link", "weir")


# -- results --------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Window:
    """Faults that overlap in time, judged together: recovery is from when the last one clears.

    ``rss_*``: weir's resident memory over the window's span (:func:`~weir.chaos.checker.rss_growth`:
    the process running when it began, from just before it to ``WINDOW_SETTLE_S`` after it ended or
    its recovery; growth None when weir was not running as it began). ``restarts``: restarts in
    that span by supervisor name, ``"process"`` for weir itself started again.
    """

    faults: tuple[str, ...]
    start: float  # seconds from the first sample
    end: float
    recovery_s: float | None  # None: nothing was left to persist when it ended
    target_s: float
    rss_before_kb: int | None = None
    rss_peak_kb: int | None = None
    rss_growth_kb: int | None = None
    restarts: Mapping[str, int] = attrs.field(factory=dict)

    @property
    def met(self) -> bool:
        return self.recovery_s is None or self.recovery_s <= self.target_s

    @property
    def restarts_by_level(self) -> dict[str, int]:
        return count_by_level(self.restarts)

    @property
    def memory_bounded(self) -> bool:
        """RSS growth within :data:`RSS_WINDOW_GROWTH_LIMIT_KB` (True when it could not be measured)."""
        return self.rss_growth_kb is None or self.rss_growth_kb <= RSS_WINDOW_GROWTH_LIMIT_KB

    def to_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "restarts_by_level": self.restarts_by_level, "memory_bounded": self.memory_bounded}


@attrs.frozen(kw_only=True)
class ScenarioResult:
    """A scenario's report plus the suite's own verdicts (``problems`` empty = passed)."""

    scenario: str
    label: str
    report: RunReport
    windows: tuple[Window, ...] = ()
    problems: tuple[str, ...] = ()
    elapsed_s: float = 0.0
    measures: Mapping[str, Any] = attrs.Factory(dict)
    log_path: str = ""
    delivery: DeliveryReport | None = None  # a scenario with delivery: what its target received

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.problems

    @property
    def recoveries(self) -> list[float]:
        return [w.recovery_s for w in self.windows if w.recovery_s is not None]

    @property
    def recovery_p50(self) -> float | None:
        r = self.recoveries
        return statistics.median(r) if r else None

    @property
    def recovery_max(self) -> float | None:
        r = self.recoveries
        return max(r) if r else None

    @staticmethod
    def table_header() -> str:
        return (
            "| scenario | faults | offered | persisted | lost | dup | out of order | unexpected | cursor ↓ "
            "| recovery p50 / max | restarts | reconnects | peak RSS | time | verdict |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"
        )

    def table_row(self) -> str:
        r = self.report

        def ms(x: float | None) -> str:
            return "–" if x is None else f"{x * 1000:.0f}"

        recovery = "–" if not self.recoveries else f"{ms(self.recovery_p50)} / {ms(self.recovery_max)} ms"
        rss = "–" if r.rss_peak_kb is None else f"{r.rss_peak_kb / 1024:.0f} MiB"
        return (
            f"| {self.scenario} | {self.label} | {r.offered} | {r.persisted} | {r.lost} | {r.duplicated} | "
            f"{r.out_of_order} | {r.unexpected} | {r.cursor_regressions} | {recovery} | {r.restarts_cell} | "
            f"{r.reconnects} | {rss} | {self.elapsed_s:.1f} s | {'ok' if self.ok else 'FAIL'} |"
        )

    def summary(self) -> str:
        lines = [f"== {self.scenario}: {'ok' if self.ok else 'FAIL'} ({self.label})", self.report.summary()]
        for w in self.windows:
            rec = "n/a (nothing pending)" if w.recovery_s is None else f"{w.recovery_s * 1000:.0f} ms"
            restarts = sum(w.restarts.values())
            lines.append(f"window {w.start:.2f}–{w.end:.2f} s [{', '.join(w.faults)}]: recovery {rec} "
                         f"(target {w.target_s:g} s){'' if w.met else ' MISSED'}; "
                         f"RSS {describe_rss(w.rss_before_kb, w.rss_peak_kb, w.rss_growth_kb)}"
                         f"{'' if w.memory_bounded else ' UNBOUNDED'}; "
                         f"restarts {format_restarts(restarts, w.restarts_by_level)}")
        if self.delivery is not None:
            lines.append(self.delivery.summary())
        for key, value in self.measures.items():
            lines.append(f"{key}: {value}")
        lines += [f"PROBLEM: {p}" for p in self.problems]
        if self.log_path:
            lines.append(f"weir log: {self.log_path}")
        return "\n".join(lines)

    @property
    def rss_growth_max_kb(self) -> int | None:
        """The largest RSS growth over any fault window (None: none measured)."""
        growth = [w.rss_growth_kb for w in self.windows if w.rss_growth_kb is not None]
        return max(growth) if growth else None

    def to_dict(self) -> dict[str, Any]:
        r = self.report
        return {
            "scenario": self.scenario, "faults": self.label, "ok": self.ok, "offered": r.offered,
            "persisted": r.persisted, "lost": r.lost, "duplicated": r.duplicated, "out_of_order": r.out_of_order,
            "unexpected": r.unexpected, "cursor_regressions": r.cursor_regressions,
            "wrong_id": sum(p.wrong_id for p in r.partitions),
            "recovery_p50_s": self.recovery_p50, "recovery_max_s": self.recovery_max,
            "restarts": r.restarts, "restarts_by_supervisor": dict(r.restarts_by_supervisor),
            "restarts_by_level": r.restarts_by_level, "escalations_by_supervisor": dict(r.escalations_by_supervisor),
            "reconnects": r.reconnects,
            "rss_first_kb": r.rss_first_kb, "rss_peak_kb": r.rss_peak_kb, "rss_last_kb": r.rss_last_kb,
            "rss_growth_max_kb": self.rss_growth_max_kb,
            "elapsed_s": round(self.elapsed_s, 2), "schedule": r.schedule,
            "windows": [w.to_dict() for w in self.windows],
            "faults_detail": [attrs.asdict(f) for f in r.faults],
            "measures": dict(self.measures), "problems": list(self.problems),
            "delivery": None if self.delivery is None else attrs.asdict(self.delivery),
        }  # fmt: skip


# -- measurements ---------------------------------------------------------------------------------


_SHAPING = ("latency", "bandwidth", "slicer")  # slow the data down but never stop it


def fault_windows(
    records: Sequence[FaultRecord],
    samples: Sequence[Any],
    origin: float,
    *,
    supervision: Sequence[SupervisionLogEntry] = (),
    wall_offset: float | None = None,
) -> list[Window]:
    """Group overlapping faults; for each group, the recovery from its end and its target, weir's
    RSS growth and the restarts by supervisor over its span (see :class:`Window`).

    Shaping faults (latency, bandwidth, slicer) and disruptive ones (everything else) are grouped
    separately: a kill under a 5 ms latency is judged from the kill's end, not the latency's. A
    window that ends while a disruptive fault holds is extended to that fault's end.

    ``supervision`` and ``wall_offset``: as for :func:`~weir.chaos.checker.check_run`.
    """
    timed = on_trio_clock(supervision, wall_offset)
    groups: list[list[Any]] = []
    for shaping in (True, False):
        spans = sorted(
            ((r.applied_at, r.cleared_at if r.cleared_at is not None else r.applied_at, r) for r in records
             if (r.fault.kind in _SHAPING) == shaping),
            key=lambda s: s[0],
        )  # fmt: skip
        mine: list[list[Any]] = []
        for start, end, record in spans:
            if mine and start <= mine[-1][1]:
                mine[-1][1] = max(mine[-1][1], end)
                mine[-1][2].append(record)
            else:
                mine.append([start, end, [record]])
        groups += mine
    groups.sort(key=lambda g: g[0])
    # A window that ends while a disruptive fault still holds is judged from when that one clears.
    for group in groups:
        extended = True
        while extended:
            extended = False
            for r in records:
                cleared = r.cleared_at if r.cleared_at is not None else r.applied_at
                if r.fault.kind not in _SHAPING and r.applied_at <= group[1] < cleared:
                    group[1] = cleared
                    if r not in group[2]:
                        group[2].append(r)
                    extended = True
    windows = []
    for start, end, members in groups:
        # The most it held by then: after a Redis rollback, recovered means back above that.
        at_end = max((s.persisted for s in samples if s.at <= end), default=0)
        recovery = next((s.at - end for s in samples if s.at > end and s.persisted > at_end), None)
        redis_side = any(m.fault.target in _PROCESS_TARGETS for m in members)
        span_end = end + max(WINDOW_SETTLE_S, recovery or 0.0)
        rss = rss_growth(samples, start, span_end)
        restarts = restarts_in_span(timed, start, span_end)
        processes = sum(1 for m in members if process_restarted(m))
        if processes:
            restarts["process"] = restarts.get("process", 0) + processes
        windows.append(Window(
            faults=tuple(m.fault.describe() for m in members), start=start - origin, end=end - origin,
            recovery_s=recovery, target_s=RECOVERY_TARGET_REDIS if redis_side else RECOVERY_TARGET_NETWORK,
            rss_before_kb=rss.before_kb, rss_peak_kb=rss.peak_kb, rss_growth_kb=rss.growth_kb, restarts=restarts,
        ))  # fmt: skip
    return windows


def judge_windows(windows: Iterable[Window]) -> list[str]:
    """The problems of each fault window: a missed recovery target, memory that was not bounded."""
    problems = []
    for w in windows:
        faults = ", ".join(w.faults)
        if not w.met:
            problems.append(f"recovery {w.recovery_s:.2f} s after [{faults}] exceeds the {w.target_s:g} s target")
        if not w.memory_bounded:
            assert w.rss_growth_kb is not None
            problems.append(f"memory not bounded: weir's RSS grew {w.rss_growth_kb / 1024:.1f} MiB over [{faults}] "
                            f"(limit {RSS_WINDOW_GROWTH_LIMIT_KB / 1024:g} MiB)")
    return problems


def judge_tail(scenario: Scenario, windows: Sequence[Window]) -> list[str]:
    """A run must persist events after its last fault on ingestion clears (the tail's load), or
    that fault's recovery was not measured. Faults on a delivery's targets are judged by the
    delivery checker instead; a run in which weir stops by itself has no tail."""
    if scenario.exits is not None:
        return []
    delivery_targets = set(scenario.delivery.schedule_targets) if scenario.delivery is not None else set()
    ingestion = [w for w in windows if any(f.partition(":")[0] not in delivery_targets for f in w.faults)]
    last = max(ingestion, key=lambda w: w.end, default=None)
    if last is None or last.recovery_s is not None:
        return []
    return [f"nothing was persisted after [{', '.join(last.faults)}] cleared: the load was over (tail "
            f"{scenario.tail:g} s), so its recovery was not measured"]


@attrs.define(eq=False)
class MetricsSampler:
    """Scrapes weir's /metrics every ``interval`` s: events received (source), persisted (sink), and
    out of the pipeline (persisted or not appended by design: :data:`LEFT_THE_PIPELINE`)."""

    port: int
    interval: float = 0.1
    points: list[tuple[float, float, float, float]] = attrs.Factory(list)  # (trio time, received, persisted, left)

    async def run(self) -> None:
        while True:
            with trio.move_on_after(1.0):
                try:
                    text = await _http_get("127.0.0.1", self.port, "/metrics")
                    self.points.append((trio.current_time(), *held_counts(text)))
                except (OSError, trio.BrokenResourceError, ValueError):
                    pass  # not listening yet, or restarting
            await trio.sleep(self.interval)

    def peak_held(self, start: float, end: float) -> int | None:
        """The most events read and not yet out of the pipeline at any scrape between ``start`` and ``end``."""
        inside = [int(received - left) for at, received, _, left in self.points if start <= at <= end]
        return max(inside) if inside else None

    def rate(self, start: float, end: float, column: int = 1) -> float | None:
        """Counter increase per second between ``start`` and ``end`` (None: too few points)."""
        inside = [p for p in self.points if start <= p[0] <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        increase = inside[-1][column] - inside[0][column]
        return increase / (inside[-1][0] - inside[0][0]) if increase >= 0 else None  # < 0: weir restarted


async def _http_get(host: str, port: int, path: str) -> str:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = bytearray()
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ValueError(head[:40])
    return body.decode(errors="replace")


def held_counts(text: str) -> tuple[float, float, float]:
    """(received, persisted, left the pipeline) over every partition, from a /metrics text."""
    left = sum(_metric_sum(text, name) for name in LEFT_THE_PIPELINE)
    return _metric_sum(text, "weir_events_received_total"), _metric_sum(text, "weir_events_persisted_total"), left


def _metric_sum(text: str, name: str) -> float:
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(text))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- one run --------------------------------------------------------------------------------------


async def run_scenario(scenario: Scenario, workdir: Path, *, start_timeout: float = 30.0) -> ScenarioResult:
    """Run ``scenario`` end to end in ``workdir`` (created) and judge it. See the module docstring."""
    began = time.monotonic()
    wall_offset = time.time() - trio.current_time()  # places weir's log lines (wall clock) on trio's clock
    workdir.mkdir(parents=True, exist_ok=True)
    source = scenario.source
    load = scenario.load()
    partitions = list(source.partitions)
    phases: dict[str, float] = {}  # where the run's time went: seconds from `began` at each step

    def mark(step: str) -> None:
        phases[step] = round(time.monotonic() - began, 2)

    problems: list[str] = []
    measures: dict[str, Any] = {}
    records: list[FaultRecord] = []
    seed = scenario.schedule.seed
    delivery_report: DeliveryReport | None = None
    redis_config = RedisServerConfig(data_dir=workdir / "redis", appendfsync="always")
    # what the source offers is computed while the processes start (it is needed from the drain on)
    async with _in_thread(source.offered, load) as offered_result, open_embedded_redis(redis_config) as redis, \
            source.open(load, workdir, seed) as network, \
            open_proxy("127.0.0.1", redis.port, seed=seed + 1) as redis_link, \
            _open_delivery(scenario, workdir, redis_link.redis_url, redis.url) as delivery:  # fmt: skip
        mark("processes_up")
        offered = await offered_result()
        mark("offered")
        last = tuple(offered[p].final_cursor for p in partitions)
        metrics_port = _free_port()
        settings = (*BASE_SETTINGS, *source.settings, f"metrics.port={metrics_port}", *scenario.settings)
        args = weir_run_command(redis_link.redis_url, network.weir_args, settings) + ["--log-format", "json", "--log-level", "INFO"]
        weir = WeirProcess(args=args, log_path=workdir / "weir.log")
        sampler = RunSampler(redis.url, partitions, pid=lambda: weir.pid, interval=0.01, source=source.name)
        metrics = MetricsSampler(metrics_port)
        targets = Targets(redis_link=redis_link, redis=redis, weir=weir,
                          network={**network.targets, **(delivery.targets if delivery else {})})

        def drained() -> bool:
            return bool(sampler.samples) and sampler.samples[-1].cursors == last

        async def drain(timeout: float) -> bool:
            if network.drained is None:
                return await wait_until(drained, timeout=timeout)
            with trio.move_on_after(timeout):
                while not await network.drained(redis.url):
                    await trio.sleep(0.05)
                return True
            return False

        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(sampler.run)
                nursery.start_soon(metrics.run)
                if scenario.before_start:
                    nursery.start_soon(functools.partial(run_schedule, scenario.schedule, targets, records=records))
                    await wait_until(lambda: len(records) > 0, timeout=start_timeout)
                    await weir.start()
                    if delivery is not None:
                        await delivery.start()
                else:
                    await weir.start()
                    if delivery is not None:  # starting beside weir: both are up when the schedule begins
                        await delivery.start()
                    if not await wait_until(lambda: bool(sampler.samples) and sampler.samples[-1].persisted > 0, start_timeout):
                        problems.append(f"weir persisted nothing within {start_timeout:g} s of starting")
                    mark("first_persisted")
                    if delivery is not None and not await delivery.wait_ready(start_timeout):
                        problems.append(f"weir deliver made no consumer group within {start_timeout:g} s of starting")
                    await run_schedule(scenario.schedule, targets, records=records)
                # the schedule's end: for before_start, wait until every fault has cleared
                await wait_until(lambda: len(records) == len(scenario.schedule.faults)
                            and all(r.cleared_at is not None for r in records), timeout=scenario.schedule.end + 60)
                faults_done = trio.current_time()
                mark("faults_done")
                if scenario.exits is not None:
                    # weir must stop by itself (a fatal error): its exit, not a drain, ends the run
                    if not await wait_until(lambda: not weir.running, timeout=scenario.drain_timeout):
                        problems.append(f"weir did not stop by itself within {scenario.drain_timeout:g} s "
                                        f"(expected exit code {scenario.exits})")
                    elif weir.returncode != scenario.exits:
                        problems.append(f"weir exited with {weir.returncode}, expected {scenario.exits}")
                elif not await drain(scenario.drain_timeout):
                    problems.append(
                        f"not drained {scenario.drain_timeout:g} s after the last fault cleared (a hang?): "
                        f"cursors {sampler.samples[-1].cursors if sampler.samples else None}, expected {last}; "
                        f"weir {'running' if weir.running else f'exited with {weir.returncode}'}"
                    )
                else:
                    measures["drain_after_last_fault_s"] = round(trio.current_time() - faults_done, 2)
                mark("drained")
                if scenario.exits is None:
                    code = await weir.terminate(timeout=15)
                    if code != 0:
                        problems.append(f"weir did not exit 0 on the final SIGTERM (exit code {code})")
                if delivery is not None:
                    delivery_report, delivery_problems = await delivery.finish(measures)
                    problems += delivery_problems
                mark("terminated")
                problems += await network.finish(offered)
                mark("source_finished")
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                weir.resume()
                await weir.kill()
        log_text = weir.log_text()
        _, reconnects = restarts_from_log(log_text)
        supervision = supervision_from_log(log_text)
        report = await check_run(
            redis.url, {p: o.events for p, o in offered.items()}, expected_cursors={p: o.final_cursor for p, o in offered.items()},
            source=source.name, name=scenario.name, sampler=sampler, records=records,
            supervision=supervision, process_restarts=weir.starts - 1, wall_offset=wall_offset,
            reconnects=reconnects, schedule=scenario.schedule.to_json(), compare=network.compare,
        )  # fmt: skip
        mark("checked")
    mark("closed")
    measures["phases_s"] = phases
    origin = sampler.samples[0].at if sampler.samples else 0.0
    windows = fault_windows(records, sampler.samples, origin, supervision=supervision, wall_offset=wall_offset)
    problems += judge_windows(windows)
    problems += judge_tail(scenario, windows)
    for r in records:
        if r.fault.kind == "term" and r.outcome != 0:
            problems.append(f"{r.fault.describe()}: weir exited with {r.outcome} on SIGTERM under load (expected 0)")
    if "memory_bounded" in scenario.checks or "source_slowed" in scenario.checks:
        _judge_stall(scenario, settings, records, sampler, metrics, measures, problems)
    problems += judge_supervision(scenario, report)
    problems += [f"expected weir to log {e!r} during the run; it did not" for e in unmet_expectations(log_text, scenario.expect)]
    if delivery is not None:
        problems += [f"expected weir deliver to log {e!r} during the run; it did not"
                     for e in unmet_expectations(delivery.log_text(), delivery.spec.expect)]
    return ScenarioResult(
        scenario=scenario.name, label=scenario.label, report=report, windows=tuple(windows),
        problems=tuple(problems), elapsed_s=time.monotonic() - began, measures=measures,
        log_path=str(weir.log_path), delivery=delivery_report,
    )  # fmt: skip


@asynccontextmanager
async def _in_thread(compute: Callable[..., Any], *args: Any) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    """Run ``compute(*args)`` in a worker thread while the body goes on; yields ``result``, which
    waits for it (an error in it is raised there, or as the block exits)."""
    box: list[Any] = []
    done = trio.Event()

    async def run() -> None:
        try:
            box.append(await trio.to_thread.run_sync(compute, *args))
        finally:
            done.set()

    async def result() -> Any:
        await done.wait()
        if not box:
            raise RuntimeError(f"{getattr(compute, '__qualname__', compute)} failed")
        return box[0]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        yield result


@asynccontextmanager
async def _open_delivery(scenario: Scenario, workdir: Path, proxied_redis_url: str,
                         redis_url: str) -> AsyncIterator[RunningDelivery | None]:
    """The scenario's ``weir deliver`` and target (None: a scenario without delivery)."""
    if scenario.delivery is None:
        yield None
        return
    async with open_delivery(scenario.delivery, workdir, proxied_redis_url=proxied_redis_url, redis_url=redis_url,
                             source=scenario.source.name, partitions=scenario.source.partitions) as delivery:
        yield delivery


def judge_supervision(scenario: Scenario, report: RunReport) -> list[str]:
    """Any escalation fails a run (a crash loop, even one the root absorbed); so do restarts
    beyond ``scenario.max_restarts``."""
    problems = []
    if report.escalations_by_supervisor and scenario.exits is None:
        problems.append("supervisors escalated (restart intensity exceeded): "
                        + ", ".join(f"{name} ×{n}" for name, n in report.escalations_by_supervisor.items()))
    by_supervisor = {name: n for name, n in report.restarts_by_supervisor.items() if name != "process" and n}
    restarts = sum(by_supervisor.values())
    if scenario.max_restarts is not None and restarts > scenario.max_restarts:
        problems.append(f"{restarts} supervisor restarts ({', '.join(f'{k} {v}' for k, v in by_supervisor.items())}); "
                        f"at most {scenario.max_restarts} expected: this fault is a reconnect or a retry, not a crash")
    return problems


def unmet_expectations(log_text: str, expect: Sequence[str]) -> list[str]:
    """The entries of ``expect`` (``"event"`` or ``"event:field~text"``) no JSON line of the log matches."""
    events: list[dict[str, Any]] = []
    for line in log_text.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a line cut by kill -9

    def matches(entry: dict[str, Any], wanted: str) -> bool:
        name, _, condition = wanted.partition(":")
        if entry.get("event") != name:
            return False
        if not condition:
            return True
        field, _, text = condition.partition("~")
        return text in str(entry.get(field, ""))

    return [wanted for wanted in expect if not any(matches(entry, wanted) for entry in events)]


def _judge_stall(scenario: Scenario, settings: Sequence[str], records: Sequence[FaultRecord], sampler: RunSampler,
                 metrics: MetricsSampler, measures: dict[str, Any], problems: list[str]) -> None:
    """Memory, sink progress and what the source holds while the Redis link is slowed (the scenario's first fault)."""
    stall = next((r for r in records if r.fault.target == "redis_link"), None)
    if stall is None or stall.cleared_at is None:
        problems.append("no Redis-link stall to judge")
        return
    start, end = stall.applied_at, stall.cleared_at
    settle = min(1.0, (end - start) / 4)  # the channels fill first
    middle = (start + settle + end) / 2
    if "memory_bounded" in scenario.checks:
        first = [s.rss_kb for s in sampler.samples if start + settle <= s.at <= middle and s.rss_kb]
        second = [s.rss_kb for s in sampler.samples if middle < s.at <= end and s.rss_kb]
        if not first or not second:
            problems.append("memory: too few RSS samples during the stall")
        else:
            growth = max(second) - max(first)
            measures["rss_peak_first_half_kb"], measures["rss_peak_second_half_kb"] = max(first), max(second)
            measures["rss_growth_kb"] = growth
            if growth > RSS_GROWTH_LIMIT_KB:
                problems.append(f"memory not bounded: weir's peak RSS grew {growth / 1024:.1f} MiB from the first "
                                f"to the second half of the stall (limit {RSS_GROWTH_LIMIT_KB / 1024:g} MiB)")
    if "source_slowed" in scenario.checks:
        offered_rate = scenario.rate * len(scenario.source.partitions)
        during = metrics.rate(start + settle, end)
        persisted = metrics.rate(start + settle, end, column=2)
        before = metrics.rate(start - 1.0, start)
        measures["offered_rate"] = offered_rate
        measures["source_rate_before_stall"] = None if before is None else round(before)
        measures["source_rate_during_stall"] = None if during is None else round(during)
        measures["persist_rate_during_stall"] = None if persisted is None else round(persisted)
        if "sink_progress" in scenario.checks and (persisted is None or persisted <= 0):
            problems.append(
                f"no progress while Redis was slow but reachable: {persisted} events/s persisted between "
                f"{settle:g} s into the slow period and its end (every write attempt timed out and was retried whole)"
            )
        bound = in_flight_bound(scenario.source.name, settings)
        held = metrics.peak_held(start, end)
        measures["peak_held_events"] = held
        if bound is None:
            problems.append(f"source_slowed: no in-flight bound is known for source {scenario.source.name!r}")
        elif held is None:
            problems.append("source slowdown: too few /metrics scrapes during the stall")
        else:
            limit = bound * len(scenario.source.partitions)
            measures["held_limit_events"] = limit
            if held > limit:
                problems.append(f"the source did not slow down: it held {held} events read but not out of the pipeline during "
                                f"the stall, more than the pipeline's buffers can hold ({limit})")


# -- generated schedules --------------------------------------------------------------------------


def schedule_scenario(schedule: Schedule, name: str = "schedule", source: ChaosSource = FARCASTER) -> Scenario:
    """A scenario that runs exactly ``schedule`` (``--schedule`` and ``--random``)."""
    return Scenario(
        name=name, label=f"{len(schedule.faults)} faults (seed {schedule.seed})",
        description="a given fault schedule", schedule=schedule, source=source, rate=800.0, history=300,
    )


def random_scenarios(count: int, seed: int, source: ChaosSource | None = None) -> list[Scenario]:
    """``count`` generated schedules on every target of a run against ``source``, the same for the
    same seed; without a source, the i-th runs against the i-th of :data:`~weir.chaos.sources.SOURCES`
    (cycling), so a few schedules draw from every source's fault kinds."""
    chosen = [source] if source is not None else list(SOURCES.values())
    out = []
    for offset, each in enumerate(chosen):
        n = len(range(offset, count, len(chosen)))  # the schedules that fall to this source
        targets = ("redis_link", "redis", "weir", *each.network_targets)
        for i, schedule in zip(range(offset, count, len(chosen)), random_schedules(
                n, seed + offset, targets=targets, horizon=4.0, max_faults=4, max_duration=2.0)):
            out.append((i, schedule_scenario(schedule, f"random-{seed}-{i}", each)))
    return [scenario for _, scenario in sorted(out, key=lambda pair: pair[0])]


def _replayed(schedule: Schedule, name: str, source: str | None) -> Scenario:
    """``--schedule``: against ``--source``, else the source whose targets the schedule names."""
    return schedule_scenario(schedule, name, SOURCES[source] if source else source_of(schedule))


# -- the suite and the command --------------------------------------------------------------------


async def run_suite(scenarios: Iterable[Scenario], workdir: Path, *, on_result: Callable[[ScenarioResult], None] | None = None) -> list[ScenarioResult]:
    results = []
    for scenario in scenarios:
        try:
            result = await run_scenario(scenario, workdir / scenario.name)
        except Exception as exc:  # the harness itself failed: a failed scenario, the suite goes on
            log.exception("scenario %s could not run", scenario.name)
            result = ScenarioResult(scenario=scenario.name, label=scenario.label,
                                    report=RunReport(name=scenario.name, partitions=(), schedule=scenario.schedule.to_json()),
                                    problems=(f"the scenario could not run: {exc!r}",))
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def main(args: argparse.Namespace) -> int:
    """``weir chaos``: run the scenarios, print the table; 1 if any failed, 2 on a usage error."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        registry = load_registry(args.scenarios_file)
    except ScenariosError as exc:
        print(f"weir chaos: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for scenario in registry.values():
            print(f"{scenario.name:28} [{scenario.source.name}] {scenario.label}\n{'':28} {scenario.description}")
        return 0
    if "all" in args.scenarios:  # `weir chaos all --random N`: every named scenario, then the generated ones
        args.scenarios = list(registry)
    unknown = [name for name in args.scenarios if name not in registry]
    if unknown:
        print(f"weir chaos: unknown scenario(s) {', '.join(unknown)}; see weir chaos --list", file=sys.stderr)
        return 2
    chosen: list[Scenario] = [registry[name] for name in args.scenarios]
    try:
        chosen += [_replayed(Schedule.from_json(text), f"schedule-{i}", args.source) for i, text in enumerate(args.schedule)]
    except (ValueError, KeyError, TypeError) as exc:
        print(f"weir chaos: bad --schedule: {exc!r}", file=sys.stderr)
        return 2
    if args.random:
        chosen += random_scenarios(args.random, args.seed, SOURCES[args.source] if args.source else None)
    if not args.scenarios and not args.schedule and not args.random:
        chosen = list(registry.values())
    if not chosen:
        print("weir chaos: no scenarios to run: the registry names none (give --random N or --schedule)",
              file=sys.stderr)
        return 2
    return trio.run(_main, chosen, args)


async def _main(chosen: list[Scenario], args: argparse.Namespace) -> int:
    began = time.monotonic()
    sources_by_name = {scenario.name: source_key(scenario.source) for scenario in chosen}

    def progress(result: ScenarioResult) -> None:
        print(f"{'ok  ' if result.ok else 'FAIL'} {result.scenario} ({result.elapsed_s:.1f} s)", file=sys.stderr, flush=True)
        if not result.ok:
            print(result.summary(), file=sys.stderr, flush=True)

    if args.workdir:
        results = await run_suite(chosen, Path(args.workdir), on_result=progress)
    else:
        with tempfile.TemporaryDirectory(prefix="weir-chaos-") as tmp:
            results = await run_suite(chosen, Path(tmp), on_result=progress)
    total = time.monotonic() - began
    print(ScenarioResult.table_header())
    for result in results:
        print(result.table_row())
    failed = [r for r in results if not r.ok]
    print(f"\n{len(results) - len(failed)}/{len(results)} scenarios passed in {total:.0f} s")
    for result in failed:
        print(f"FAILED {result.scenario}: " + "; ".join(result.problems or ("lost/duplicated/out-of-order/cursor: see above",)))
        if result.scenario.startswith(("random-", "schedule-")):
            source = sources_by_name.get(result.scenario)
            print(f"  replay: weir chaos --schedule '{result.report.schedule}'" + (f" --source {source}" if source else ""))
        else:
            print(f"  replay: weir chaos {result.scenario}   (schedule {result.report.schedule})")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"total_s": round(total, 1), "passed": not failed, "results": [r.to_dict() for r in results]}, indent=1,
        ) + "\n")  # fmt: skip
    return 1 if failed else 0
