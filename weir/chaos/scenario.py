"""A named chaos scenario: a fault schedule, the source it runs against, the load, and the extra checks.

Plain data: the built-in scenarios (:mod:`weir.chaos.scenarios`) and a user's own file
(:mod:`weir.chaos.registry`) build them; the engine (:mod:`weir.chaos.suite`) runs them.
"""

from __future__ import annotations

import attrs

from weir.chaos.delivery import Delivery
from weir.chaos.farcaster import FARCASTER
from weir.chaos.schedule import Schedule, TimedFault
from weir.chaos.source import ChaosSource, Load

__all__ = ["LIVE_LEAD_S", "REDIS_OUTAGE_LOGS", "Scenario", "fault"]

#: What a Redis outage must make weir say, whatever the source (docs/observability.md): the persist
#: actor notices the failed write, and says so again when a write succeeds.
REDIS_OUTAGE_LOGS = ("sink_unavailable", "sink_available")
#: Seconds of live load before the schedule's clock starts: the simulators start their live phase
#: when weir connects, and the schedule counts from weir's first persisted event, a moment later.
LIVE_LEAD_S = 0.5


def fault(target: str, kind: str, start: float, duration: float = 0.0, **params: object) -> TimedFault:
    """``kind`` on ``target`` from ``start`` for ``duration`` s: the short form scenarios are written in."""
    return TimedFault(target=target, kind=kind, start=start, duration=duration, params=params)


@attrs.frozen(kw_only=True)
class Scenario:
    """A named chaos run.

    Attributes:
        name: the registry key, e.g. ``redis-kill``.
        label: the faults in a few words (the table's "faults" column).
        description: what it exercises (``--list``).
        schedule: the faults, in seconds from when weir first persists (see ``before_start``).
        source: the network it runs against (:class:`~weir.chaos.source.ChaosSource`; default:
            Farcaster, two simulated Snapchain shards).
        rate: events/s per partition the simulator produces (after ``history`` that exist at its start).
        history: events per partition that exist when the simulator starts.
        tail: seconds of production left after the last fault clears, so recovery is measured
            while events still arrive (the engine fails a run whose load was over before that).
        before_start: apply the schedule's first fault *before* starting weir (Redis down at start-up).
        settings: extra ``--set`` for weir (after the engine's and the source's settings).
        checks: extra verdicts under a slow Redis link: ``memory_bounded`` (RSS does not grow with the
            stall's length), ``source_slowed`` (what the source read and is not yet out of the pipeline
            stays within what the pipeline's buffers hold: :mod:`weir.chaos.backpressure`),
            ``sink_progress`` (events are still persisted while the link is slow).
        expect: log events weir must write during the run, so a scenario proves the behaviour the
            docs describe, not only the outcome: ``"event"`` or ``"event:field~text"`` (a JSON log
            line with that ``event`` whose ``field`` contains ``text``), e.g.
            ``"disconnect:error~IdleStream"``.
        max_restarts: supervisor restarts allowed in the run (None: any); 0 where the fault must be
            absorbed by a reconnect or a retry, never by restarting an actor.
        drain_timeout: seconds after the last fault to wait for the full drain.
        exits: weir must stop by itself with this exit code once the faults are applied (a fatal
            error, e.g. a reorg deeper than it can retract: 3), within ``drain_timeout``, instead of
            draining; supervisors escalating on the way are then expected. None: weir runs on.
        delivery: also run ``weir deliver`` into a target, with its own faults and verdict
            (:mod:`weir.chaos.delivery`). None: ingestion only.
    """

    name: str
    label: str
    description: str = ""
    schedule: Schedule
    source: ChaosSource = FARCASTER
    rate: float = 1000.0
    history: int = 500
    tail: float = 1.0
    before_start: bool = False
    settings: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()
    expect: tuple[str, ...] = ()
    max_restarts: int | None = None
    drain_timeout: float = 30.0
    exits: int | None = None
    delivery: Delivery | None = None

    def __attrs_post_init__(self) -> None:
        provided = {"redis", "redis_link", "weir", *self.source.network_targets,
                    *(self.delivery.schedule_targets if self.delivery else ())}
        missing = sorted({f.target for f in self.schedule.faults} - provided)
        if missing:
            raise ValueError(f"scenario {self.name}: the {self.source.name} source has no target {', '.join(missing)} "
                             f"(it has {', '.join(sorted(provided))})")

    def load(self) -> Load:
        # every simulator holds its live phase until weir first connects: from there, up to the
        # first persisted event (LIVE_LEAD_S) + the schedule + the tail, at `rate`; the schedule's
        # seed, so `weir chaos --schedule '<json>'` replays the very same data
        return Load(seed=self.schedule.seed, rate=self.rate, history=self.history,
                    seconds=LIVE_LEAD_S + self.schedule.end + self.tail)
