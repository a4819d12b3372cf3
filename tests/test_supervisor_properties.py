"""Property test: random crash schedules against a small reference model of OTP supervision.

Each child is a puppet the test drives: at integer times an action makes the live instance of
one child crash or return. Backoff delays are kept below one second, so every restart has
settled before the next action; the intensity period and the stable period are half-integers,
so no crash ever sits exactly on a window edge. The model predicts the full event sequence
(who stops, who starts, in which order), the backoff delays (same seeded jitter), how many
times each child was started and whether and when the supervisor escalates or runs out of
children.
"""

from __future__ import annotations

import random

import attrs
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from weir.supervision import (
    Backoff,
    ChildSpec,
    Restart,
    Strategy,
    SupervisionEvent,
    Supervisor,
    SupervisorEscalation,
)

MAX_DELAY = 0.4  # < 1 s between actions: restarts settle before the next one


class Boom(Exception):
    pass


@attrs.frozen
class Scenario:
    restarts: tuple[Restart, ...]
    strategy: Strategy
    max_restarts: int
    period: float
    stable_after: float
    initial_backoff: float
    seed: int
    actions: tuple[tuple[int, int, str], ...]  # (time, child index, "crash" | "exit")

    @property
    def names(self) -> list[str]:
        return [f"c{i}" for i in range(len(self.restarts))]

    @property
    def end(self) -> int:
        return (self.actions[-1][0] if self.actions else 0) + 1


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(1, 5))
    gaps = draw(st.lists(st.integers(1, 3), max_size=14))
    actions = []
    t = 0
    for gap in gaps:
        t += gap
        actions.append((t, draw(st.integers(0, n - 1)), draw(st.sampled_from(["crash", "exit"]))))
    return Scenario(
        restarts=tuple(draw(st.lists(st.sampled_from(Restart), min_size=n, max_size=n))),
        strategy=draw(st.sampled_from(Strategy)),
        max_restarts=draw(st.integers(0, 4)),
        period=draw(st.integers(1, 8)) + 0.5,
        stable_after=draw(st.integers(1, 6)) + 0.5,
        initial_backoff=draw(st.sampled_from([0.0, 0.01, 0.05])),
        seed=draw(st.integers(0, 2**32 - 1)),
        actions=tuple(actions),
    )


@attrs.define
class Expected:
    events: list[tuple[str, str | None, int]] = attrs.Factory(list)
    delays: list[float] = attrs.Factory(list)
    starts: list[int] = attrs.Factory(list)
    outcome: str = "stopped"  # "stopped" | "exited" | "escalated"
    end_time: float = 0.0
    escalated_child: str | None = None
    escalation_crashed: bool = False


def model(sc: Scenario) -> Expected:
    """What an OTP supervisor does with this schedule, written as plainly as possible."""
    n, names = len(sc.restarts), sc.names
    exp = Expected(starts=[1] * n)
    live = [True] * n
    removed = [False] * n  # temporary children never come back
    exp.events += [("started", name, 0) for name in names] + [("started", None, 0)]
    window: list[float] = []
    last_restart: float | None = None
    attempt = 0
    rng = random.Random(sc.seed)

    for t, i, what in sc.actions:
        if not live[i]:
            continue  # nothing to crash: the driver skips it too
        live[i] = False
        crashed = what == "crash"
        exp.events.append(("crashed" if crashed else "exited", names[i], 0))
        kind = sc.restarts[i]
        if not (kind is Restart.PERMANENT or (kind is Restart.TRANSIENT and crashed)):
            removed[i] = kind is Restart.TEMPORARY
            if not any(live):
                exp.events.append(("exited", None, 0))
                exp.outcome, exp.end_time = "exited", t
                return exp
            continue

        window = [s for s in window if t - s <= sc.period] + [t]
        if len(window) > sc.max_restarts:
            exp.events.append(("escalated", names[i], len(window)))
            exp.events += [("stopped", names[j], 0) for j in reversed(range(n)) if live[j]]
            exp.outcome, exp.end_time = "escalated", t
            exp.escalated_child, exp.escalation_crashed = names[i], crashed
            return exp

        if last_restart is not None and t - last_restart >= sc.stable_after:
            attempt = 0
        last_restart = t
        exp.delays.append(rng.uniform(0.0, min(MAX_DELAY, sc.initial_backoff * 2.0**attempt)))
        attempt += 1
        exp.events.append(("restarting", names[i], len(window)))

        if sc.strategy is Strategy.ONE_FOR_ONE:
            group = [i]
        elif sc.strategy is Strategy.ONE_FOR_ALL:
            group = list(range(n))
        else:
            group = list(range(i, n))
        for j in reversed(group):
            if live[j]:
                live[j] = False
                removed[j] = sc.restarts[j] is Restart.TEMPORARY
                exp.events.append(("stopped", names[j], 0))
        for j in group:
            if not removed[j]:
                live[j] = True
                exp.starts[j] += 1
                exp.events.append(("started", names[j], 0))

    exp.events += [("stopped", names[j], 0) for j in reversed(range(n)) if live[j]]
    exp.events.append(("stopped", None, 0))
    exp.end_time = sc.end
    return exp


@attrs.define
class Puppet:
    """One running instance of a child, waiting for the driver's order."""

    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    action: str = ""


def puppet_target(index: int, registry: dict[int, Puppet], starts: list[int]):  # type: ignore[no-untyped-def]
    async def target(stopping: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
        puppet = Puppet()
        registry[index] = puppet
        starts[index] += 1
        try:
            task_status.started()
            with puppet.scope:
                await stopping.wait()
                return
            if puppet.action == "crash":
                raise Boom(index)
        finally:
            if registry.get(index) is puppet:
                del registry[index]

    return target


@settings(max_examples=100, deadline=None, database=None)
@given(scenarios())
def test_supervisor_matches_the_reference_model(sc: Scenario) -> None:
    registry: dict[int, Puppet] = {}
    starts = [0] * len(sc.restarts)
    events: list[SupervisionEvent] = []
    sup = Supervisor(
        "prop",
        [
            ChildSpec(name=name, target=puppet_target(i, registry, starts), restart=restart)
            for i, (name, restart) in enumerate(zip(sc.names, sc.restarts, strict=True))
        ],
        strategy=sc.strategy,
        max_restarts=sc.max_restarts,
        period=sc.period,
        backoff=Backoff(initial=sc.initial_backoff, maximum=MAX_DELAY, multiplier=2.0),
        stable_after=sc.stable_after,
        rng=random.Random(sc.seed),
        on_event=events.append,
    )
    result: dict[str, object] = {}

    async def main() -> None:
        finished = trio.Event()

        async def supervise(*, task_status: trio.TaskStatus[None]) -> None:
            try:
                await sup.run(task_status=task_status)
                result["outcome"] = "returned"
            except SupervisorEscalation as exc:
                result["outcome"] = "escalated"
                result["error"] = exc
            result["time"] = trio.current_time()
            finished.set()

        # A hang fails the example instead of blocking the run.
        with trio.fail_after(sc.end + 1000.0):
            async with trio.open_nursery() as nursery:
                await nursery.start(supervise)
                for t, index, what in sc.actions:
                    await trio.sleep_until(t)
                    if finished.is_set():
                        break
                    puppet = registry.get(index)
                    if puppet is not None:
                        puppet.action = what
                        puppet.scope.cancel()
                if not finished.is_set():
                    await trio.sleep_until(sc.end)
                    sup.stop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    exp = model(sc)
    got = [
        (e.kind, e.child, e.restarts_in_period if e.kind in ("restarting", "escalated") else 0)
        for e in events
    ]
    assert got == exp.events
    assert [e.delay for e in events if e.kind == "restarting"] == exp.delays
    assert all(e.strategy == sc.strategy.value for e in events)
    assert starts == exp.starts
    assert registry == {}  # nothing left running
    assert result["time"] == exp.end_time or abs(float(result["time"]) - exp.end_time) < 1e-9  # type: ignore[arg-type]

    stats = sup.statistics()
    assert [c.restarts for c in stats.children] == [s - 1 for s in exp.starts]
    assert stats.restarts == len(exp.delays)
    assert not any(c.running for c in stats.children)
    if exp.outcome == "escalated":
        error = result["error"]
        assert isinstance(error, SupervisorEscalation)
        assert error.child == exp.escalated_child
        assert isinstance(error.__cause__, Boom) == exp.escalation_crashed
        assert stats.escalations == 1
    else:
        assert result["outcome"] == "returned"
        assert stats.escalations == 0
