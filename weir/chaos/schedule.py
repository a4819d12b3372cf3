"""Fault schedules: timed faults on named targets, a trio runner, and a seeded generator.

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
``relay_link``  proxy faults between weir and the AT Protocol simulator (as ``hub_link``)
``relay``       ``drop``, ``error_frame`` (``params.name``), ``outdated_cursor`` (all instant)
``node_link``   proxy faults between weir and the Ethereum node
``node``        ``reorg`` (``params.depth`` blocks, instant), ``drop`` (every connection, instant),
                ``mute`` (head subscriptions go silent, instant), ``lag`` (``params.blocks``
                behind, for ``duration``), ``refuse`` (new connections, for ``duration``)
``deliver``     ``weir deliver`` (scenarios with delivery): ``kill`` (waits until it holds entries,
                kill -9, started again after ``duration``), ``pause``, ``term`` (as for weir)
``nats``        the NATS target's nats-server: ``kill`` (kill -9, started again on the same port
                and store after ``duration``), ``pause``
``endpoint``    the webhook target's receiver, for ``duration``: ``error_500`` (answers 500),
                ``hang`` (never answers), ``close_early`` (closes the connection unanswered)
==============  ==========================================================================

``hub_link`` and ``hub`` are the Farcaster source's (:mod:`weir.chaos.farcaster`), ``relay_link``
and ``relay`` the AT Protocol sources' (:mod:`weir.chaos.atproto`); the others
every run has. A new source adds its targets to :data:`KINDS`: a proxy in front of its simulator
is a target named ``<something>_link`` with the proxy's kinds, and takes every link fault as is;
a control target needs its kinds here, and either a branch in ``_apply`` or an
``apply_fault(fault)`` method of its own (awaited; returns the async function that clears the
fault and the fault's outcome), which ``_apply`` calls first. A kind that happens at once (no
duration) goes in :data:`INSTANT_KINDS` too.

:func:`generate_schedule` draws a schedule from a ``random.Random`` (``weir chaos --random N
--seed S`` needs nothing else); :func:`schedules` is the same generator as a hypothesis strategy,
for property tests.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import trio
from grpclib.const import Status

from weir.chaos.processes import (
    ProcessTarget,
    restart_redis_from,
    save_redis_state,
)
from weir.chaos.proxy import FAULT_KINDS, Direction, Fault, FaultProxy

__all__ = [
    "INSTANT_KINDS",
    "KINDS",
    "FaultRecord",
    "Schedule",
    "Targets",
    "TimedFault",
    "generate_schedule",
    "random_schedules",
    "run_schedule",
    "schedules",
]

log = logging.getLogger("weir.chaos.schedule")

PROCESS_TARGETS = ("redis", "weir")
KINDS: dict[str, tuple[str, ...]] = {
    "hub_link": tuple(FAULT_KINDS),
    "redis_link": tuple(FAULT_KINDS),
    "redis": ("kill", "pause", "rollback"),
    "weir": ("kill", "pause", "term"),
    "hub": ("drop_streams", "error"),
    "relay_link": tuple(FAULT_KINDS),  # the AT Protocol sources' (weir.chaos.atproto)
    "relay": ("drop", "error_frame", "outdated_cursor"),
    "node_link": tuple(FAULT_KINDS),  # the Ethereum source's (weir.chaos.ethereum)
    "node": ("reorg", "drop", "mute", "lag", "refuse"),
    "deliver": ("kill", "pause", "term"),  # weir deliver, in a scenario with delivery (weir.chaos.delivery)
    "nats": ("kill", "pause"),  # the nats-server of a NATS delivery target (kill: -9, started again after duration)
    "endpoint": ("error_500", "hang", "close_early"),  # a webhook target's receiver (weir.chaos.webhook_endpoint)
}
#: Kinds that happen at once: the generator gives them no duration.
INSTANT_KINDS: set[str] = {"drop_streams", "drop", "error_frame", "outdated_cursor", "reorg", "mute"}


def is_link(target: str) -> bool:
    """Whether ``target`` is a fault proxy (takes the proxy's faults): ``redis_link``, ``hub_link``, …"""
    return target.endswith("_link")


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
        if is_link(self.target):
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
    """What a schedule acts on; a fault on a target that is missing (or None) is an error.

    ``redis_link``, ``redis`` and ``weir`` are every run's; ``network`` holds the source's own
    targets by name (``{"hub_link": proxy, "hub": control}`` for Farcaster).
    """

    redis_link: FaultProxy | None = None
    redis: ProcessTarget | None = None
    weir: ProcessTarget | None = None
    network: Mapping[str, Any] = attrs.Factory(dict)

    def get(self, name: str) -> Any:
        if name in ("redis_link", "redis", "weir"):
            return getattr(self, name)
        return self.network.get(name)


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
        if targets.get(fault.target) is None:
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
    target = targets.get(fault.target)
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
    if is_link(fault.target):
        handle = target.add(fault.proxy_fault(), fault.param("direction", "both"))

        async def remove() -> None:
            target.remove(handle)

        return remove, None
    apply_fault = getattr(target, "apply_fault", None)
    if apply_fault is not None:  # a source's control target that applies its own kinds
        return await apply_fault(fault)
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


def generate_schedule(
    rng: random.Random,
    *,
    targets: Sequence[str] = ("hub_link", "redis_link"),
    kinds: Mapping[str, Sequence[str]] | None = None,
    max_faults: int = 4,
    horizon: float = 5.0,
    min_duration: float = 0.05,
    max_duration: float = 2.0,
) -> Schedule:
    """A :class:`Schedule` drawn from ``rng`` (bounded count, start, duration and parameters).

    Faults on one process or the hub's error switch never overlap (a kill while frozen is not a
    scenario anyone can reason about); link faults may overlap. Times are rounded to 10 ms so the
    JSON line stays short. The same ``rng`` state gives the same schedule.
    """
    allowed = {t: tuple((kinds or {}).get(t, KINDS[t])) for t in targets}
    names = list(allowed)
    seed = rng.randint(0, 2**31 - 1)
    faults: list[TimedFault] = []
    busy: dict[str, list[tuple[float, float]]] = {}
    for _ in range(rng.randint(0, max_faults)):
        target = rng.choice(names)
        kind = rng.choice(allowed[target])
        start = _round(rng.uniform(0, horizon))
        duration = 0.0 if kind in INSTANT_KINDS else _round(rng.uniform(min_duration, max_duration))
        params = _draw_params(rng, target, kind)
        if not is_link(target):
            spans = busy.setdefault(target, [])
            if any(start < e and s < start + duration + 0.01 for s, e in spans):
                continue  # would overlap: leave it out (deterministically)
            spans.append((start, start + duration + 0.01))
        faults.append(TimedFault(target=target, kind=kind, start=start, duration=duration, params=params))
    return Schedule(faults=faults, seed=seed)


def _draw_params(rng: random.Random, target: str, kind: str) -> dict[str, Any]:
    if not is_link(target):
        if kind == "error":
            return {"status": rng.choice(["UNAVAILABLE", "INTERNAL", "RESOURCE_EXHAUSTED"])}
        if kind == "reorg":
            return {"depth": rng.randint(1, 3)}
        if kind == "lag":
            return {"blocks": rng.randint(1, 8)}
        return {}
    if kind == "down":
        return {}
    fields: dict[str, Any] = {
        "latency": lambda: {"ms": rng.randint(1, 500), "jitter_ms": rng.randint(0, 50)},
        "bandwidth": lambda: {"kb_per_s": rng.randint(10, 10_000)},
        "timeout": lambda: {"close_after_ms": rng.choice([None, rng.randint(1, 1000)])},
        "reset_peer": lambda: {"after_ms": rng.randint(0, 1000)},
        "slicer": lambda: {"average_size": rng.randint(8, 64), "size_variation": rng.randint(0, 7),
                           "delay_us": rng.randint(0, 2000)},
        "limit_data": lambda: {"bytes": rng.randint(0, 65536)},
    }[kind]()
    return {"direction": rng.choice([d.value for d in Direction]), **fields}


def random_schedules(count: int, seed: int, *, targets: Sequence[str], horizon: float = 4.0, max_faults: int = 4,
                     max_duration: float = 2.0, attempts: int = 1000) -> list[Schedule]:
    """``count`` distinct schedules of at least two distinct faults each, the same for the same seed."""
    rng = random.Random(seed)
    found: list[Schedule] = []
    for _ in range(attempts):
        if len(found) == count:
            break
        schedule = generate_schedule(rng, targets=targets, max_faults=max_faults, horizon=horizon, max_duration=max_duration)
        if len(set(schedule.faults)) >= 2 and schedule not in found:
            found.append(schedule)
    return found


def schedules(**options: Any):  # type: ignore[no-untyped-def]
    """:func:`generate_schedule` as a hypothesis strategy (same options). Hypothesis is a test
    dependency, imported only here."""
    from hypothesis import strategies as st

    return st.randoms(use_true_random=False).map(lambda rng: generate_schedule(rng, **options))
