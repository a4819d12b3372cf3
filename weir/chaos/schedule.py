"""Fault schedules: timed faults on named targets, a trio runner, and a hypothesis strategy.

A schedule is a value that prints as one compact JSON line and parses back exactly
(``Schedule.from_json(s.to_json()) == s``), so a failing chaos run is replayed from its log line.

Targets and kinds:

==============  ==========================================================================
``hub_link``    proxy faults between weir and the simulator: latency, bandwidth, timeout,
``redis_link``  reset_peer, slicer, limit_data, down (params: the fault's fields, ``direction``)
``redis``       ``kill`` (kill -9, started again after ``duration``), ``pause`` (SIGSTOP/SIGCONT),
                ``rollback`` (its state is saved as the fault starts; after ``duration`` it is
                killed and started on that state: the writes it acknowledged in between are lost)
``weir``        ``kill``, ``pause`` (as for redis), ``term`` (SIGTERM: ordered drain and exit, the
                exit code is the record's ``outcome``; started again after ``duration``)
``hub``         ``drop_streams`` (instant), ``error`` (status ``params.status`` for ``duration``)
==============  ==========================================================================
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import trio
from grpclib.const import Status

from weir.chaos.processes import (
    HubControl,
    ProcessTarget,
    restart_redis_from,
    save_redis_state,
)
from weir.chaos.proxy import FAULT_KINDS, Direction, Fault, FaultProxy

__all__ = [
    "KINDS",
    "FaultRecord",
    "Schedule",
    "Targets",
    "TimedFault",
    "run_schedule",
    "schedules",
]

log = logging.getLogger("weir.chaos.schedule")

LINK_TARGETS = ("hub_link", "redis_link")
PROCESS_TARGETS = ("redis", "weir")
KINDS: dict[str, tuple[str, ...]] = {
    "hub_link": tuple(FAULT_KINDS),
    "redis_link": tuple(FAULT_KINDS),
    "redis": ("kill", "pause", "rollback"),
    "weir": ("kill", "pause", "term"),
    "hub": ("drop_streams", "error"),
}


def _params(value: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((str(k), v) for k, v in items))


@attrs.frozen(kw_only=True)
class TimedFault:
    """One fault: ``kind`` on ``target`` from ``start`` for ``duration`` seconds (from the run's start).

    ``params`` holds the fault's parameters as sorted (name, value) pairs (a dict is accepted).
    """

    target: str
    kind: str
    start: float = attrs.field(validator=attrs.validators.ge(0))
    duration: float = attrs.field(validator=attrs.validators.ge(0))
    params: tuple[tuple[str, Any], ...] = attrs.field(default=(), converter=_params)

    def __attrs_post_init__(self) -> None:
        kinds = KINDS.get(self.target)
        if kinds is None:
            raise ValueError(f"unknown target {self.target!r} (one of {', '.join(KINDS)})")
        if self.kind not in kinds:
            raise ValueError(f"target {self.target} has no fault {self.kind!r} (one of {', '.join(kinds)})")
        if self.target in LINK_TARGETS:
            self.proxy_fault()  # validates the parameters now, not when the fault is due
            Direction(self.param("direction", "both"))
        if self.kind == "error" and self.param("status", "UNAVAILABLE") not in Status.__members__:
            raise ValueError(f"unknown gRPC status {self.param('status')!r}")

    @property
    def end(self) -> float:
        return self.start + self.duration

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def proxy_fault(self) -> Fault:
        """The proxy fault of a link target (parameters other than ``direction``)."""
        fields = {k: v for k, v in self.params if k != "direction"}
        return FAULT_KINDS[self.kind](**fields)  # type: ignore[no-any-return]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "kind": self.kind, "start": self.start, "duration": self.duration}
        if self.params:
            out["params"] = dict(self.params)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimedFault:
        return cls(
            target=data["target"], kind=data["kind"], start=data["start"], duration=data["duration"],
            params=data.get("params", {}),
        )  # fmt: skip

    def describe(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.target}:{self.kind}{f'({params})' if params else ''}@{self.start:g}+{self.duration:g}s"


@attrs.frozen(kw_only=True)
class Schedule:
    """Timed faults (sorted by start) and the seed for anything random in the run (jitter, slices)."""

    faults: tuple[TimedFault, ...] = attrs.field(
        default=(), converter=lambda fs: tuple(sorted(fs, key=lambda f: (f.start, f.target, f.kind)))
    )
    seed: int = 0

    @property
    def end(self) -> float:
        """When the last fault clears (seconds from the start)."""
        return max((f.end for f in self.faults), default=0.0)

    def to_json(self) -> str:
        """One compact line; :meth:`from_json` gives back an equal schedule."""
        return json.dumps({"seed": self.seed, "faults": [f.to_dict() for f in self.faults]}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        data = json.loads(text)
        return cls(seed=data.get("seed", 0), faults=[TimedFault.from_dict(f) for f in data["faults"]])


@attrs.define(eq=False, kw_only=True)
class Targets:
    """What a schedule acts on; a fault on a target that is None is an error."""

    hub_link: FaultProxy | None = None
    redis_link: FaultProxy | None = None
    redis: ProcessTarget | None = None
    weir: ProcessTarget | None = None
    hub: HubControl | None = None


@attrs.define(kw_only=True)
class FaultRecord:
    """When a fault was really applied and cleared (trio clock), for the checker's recovery times."""

    fault: TimedFault
    applied_at: float
    cleared_at: float | None = None
    outcome: Any = None  # what applying it returned: the exit code of a ``term`` (None: did not exit)


async def run_schedule(
    schedule: Schedule,
    targets: Targets,
    *,
    records: list[FaultRecord] | None = None,
    task_status: trio.TaskStatus[list[FaultRecord]] = trio.TASK_STATUS_IGNORED,
) -> list[FaultRecord]:
    """Apply and clear each fault on time (offsets from when this is called); return the records.

    Hands ``records`` (filled as faults happen) to ``nursery.start`` callers at once. On
    cancellation every fault still applied is cleared (processes are started/resumed again).
    """
    for fault in schedule.faults:
        if getattr(targets, fault.target) is None:
            raise ValueError(f"the schedule needs target {fault.target!r}, which was not given")
    records = [] if records is None else records
    t0 = trio.current_time()
    task_status.started(records)
    async with trio.open_nursery() as nursery:
        for fault in schedule.faults:
            nursery.start_soon(_run_one, fault, targets, t0, records)
    return records


async def _run_one(fault: TimedFault, targets: Targets, t0: float, records: list[FaultRecord]) -> None:
    await trio.sleep_until(t0 + fault.start)
    target = getattr(targets, fault.target)
    clear, outcome = await _apply(fault, target)
    record = FaultRecord(fault=fault, applied_at=trio.current_time(), outcome=outcome)
    records.append(record)
    log.info("chaos: %s applied", fault.describe())
    try:
        await trio.sleep_until(t0 + fault.end)
    finally:
        with trio.CancelScope(shield=True):
            await clear()
            record.cleared_at = trio.current_time()
            log.info("chaos: %s cleared", fault.describe())


async def _apply(fault: TimedFault, target: Any):  # type: ignore[no-untyped-def]
    """Apply ``fault``; return an async function that clears it, and the fault's outcome."""
    if fault.target in LINK_TARGETS:
        handle = target.add(fault.proxy_fault(), fault.param("direction", "both"))

        async def remove() -> None:
            target.remove(handle)

        return remove, None
    if fault.kind == "kill":
        await target.kill()
        return target.start, None
    if fault.kind == "rollback":
        saved = await save_redis_state(target)

        async def roll_back() -> None:
            await restart_redis_from(target, saved)

        return roll_back, None
    if fault.kind == "term":
        code = await target.terminate()
        if code is None:  # did not drain in time: a failure the caller sees in the outcome
            await target.kill()
        return target.start, code
    if fault.kind == "pause":
        target.pause()

        async def resume() -> None:
            target.resume()

        return resume, None
    if fault.kind == "drop_streams":
        await target.drop_streams()

        async def nothing() -> None:
            pass

        return nothing, None
    if fault.kind == "error":
        await target.set_error(Status[fault.param("status", "UNAVAILABLE")])

        async def recover() -> None:
            await target.set_error(None)

        return recover, None
    raise AssertionError(fault.kind)


# -- generation ---------------------------------------------------------------------------------


def _round(x: float) -> float:
    return round(x, 2)


def schedules(
    *,
    targets: Sequence[str] = ("hub_link", "redis_link"),
    kinds: Mapping[str, Sequence[str]] | None = None,
    max_faults: int = 4,
    horizon: float = 5.0,
    min_duration: float = 0.05,
    max_duration: float = 2.0,
):  # type: ignore[no-untyped-def]
    """A hypothesis strategy of :class:`Schedule` (bounded count, start, duration and parameters).

    Faults on one process or the hub's error switch never overlap (a kill while frozen is not a
    scenario anyone can reason about); link faults may overlap. Times are rounded to 10 ms so the
    JSON line stays short. Hypothesis is a test dependency, imported only here.
    """
    from hypothesis import strategies as st

    allowed = {t: tuple((kinds or {}).get(t, KINDS[t])) for t in targets}

    @st.composite
    def build(draw) -> Schedule:  # type: ignore[no-untyped-def]
        seed = draw(st.integers(0, 2**31 - 1))
        count = draw(st.integers(0, max_faults))
        faults: list[TimedFault] = []
        busy: dict[str, list[tuple[float, float]]] = {}
        for _ in range(count):
            target = draw(st.sampled_from(list(allowed)))
            kind = draw(st.sampled_from(allowed[target]))
            start = _round(draw(st.floats(0, horizon)))
            duration = 0.0 if kind == "drop_streams" else _round(draw(st.floats(min_duration, max_duration)))
            params = draw(_params_strategy(st, target, kind))
            if target not in LINK_TARGETS:
                spans = busy.setdefault(target, [])
                if any(start < e and s < start + duration + 0.01 for s, e in spans):
                    continue  # would overlap: leave it out (deterministically)
                spans.append((start, start + duration + 0.01))
            faults.append(TimedFault(target=target, kind=kind, start=start, duration=duration, params=params))
        return Schedule(faults=faults, seed=seed)

    return build()


def _params_strategy(st, target: str, kind: str):  # type: ignore[no-untyped-def]
    if target not in LINK_TARGETS:
        if kind == "error":
            return st.fixed_dictionaries({"status": st.sampled_from(["UNAVAILABLE", "INTERNAL", "RESOURCE_EXHAUSTED"])})
        return st.just({})
    direction = st.sampled_from([d.value for d in Direction])
    ms = st.integers(0, 1000)
    fields = {
        "latency": {"ms": st.integers(1, 500), "jitter_ms": st.integers(0, 50)},
        "bandwidth": {"kb_per_s": st.integers(10, 10_000)},
        "timeout": {"close_after_ms": st.one_of(st.none(), st.integers(1, 1000))},
        "reset_peer": {"after_ms": ms},
        "slicer": {"average_size": st.integers(8, 64), "size_variation": st.integers(0, 7), "delay_us": st.integers(0, 2000)},
        "limit_data": {"bytes": st.integers(0, 65536)},
        "down": {},
    }[kind]
    if kind == "down":
        return st.just({})
    return st.fixed_dictionaries({"direction": direction, **fields})
