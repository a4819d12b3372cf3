"""Behaviour of weir.supervision.Supervisor on trio's MockClock: strategies, restart types,
intensity, backoff, shutdown order and grace, readiness, cancellation."""

from __future__ import annotations

import logging
import random

import attrs
import pytest
import trio
import trio.testing

from weir.supervision import (
    Backoff,
    ChildSpec,
    Restart,
    Strategy,
    SupervisionEvent,
    Supervisor,
    SupervisorEscalation,
)

# Zero backoff unless a test is about backoff: restarts then happen at the crash instant.
NO_BACKOFF = Backoff(initial=0.0, maximum=0.0)


class Boom(Exception):
    pass


@attrs.define
class Recorder:
    """Collects supervision events with the (mock) time they were emitted."""

    events: list[tuple[float, SupervisionEvent]] = attrs.Factory(list)

    def __call__(self, event: SupervisionEvent) -> None:
        self.events.append((trio.current_time(), event))

    def kinds(self, *kinds: str) -> list[tuple[str, str | None]]:
        """(kind, child) pairs in emission order, optionally only of the given kinds."""
        return [(e.kind, e.child) for _, e in self.events if not kinds or e.kind in kinds]

    def of(self, kind: str) -> list[SupervisionEvent]:
        return [e for _, e in self.events if e.kind == kind]


@attrs.define
class Scripted:
    """A child whose n-th start follows the n-th script entry (the last one repeats).

    Entries: ("serve",) waits for `stopping`; ("crash", t) raises Boom after t seconds;
    ("exit", t) returns after t seconds; ("crash_before_ready",) raises before started();
    ("ignore_stop",) serves but ignores `stopping`.
    """

    name: str
    script: list[tuple[object, ...]]
    log: list[tuple[float, str, str]]
    ready_delay: float = 0.0
    starts: int = 0

    async def __call__(
        self, stopping: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        step = self.script[min(self.starts, len(self.script) - 1)]
        self.starts += 1
        self.log.append((trio.current_time(), "start", self.name))
        if step[0] == "crash_before_ready":
            raise Boom(f"{self.name} failed to start")
        try:
            await trio.sleep(self.ready_delay)
            task_status.started()
            if step[0] == "serve":
                await stopping.wait()
                self.log.append((trio.current_time(), "stop", self.name))
            elif step[0] == "crash":
                await trio.sleep(float(step[1]))  # type: ignore[arg-type]
                raise Boom(f"{self.name} crashed")
            elif step[0] == "exit":
                await trio.sleep(float(step[1]))  # type: ignore[arg-type]
            elif step[0] == "ignore_stop":
                await trio.sleep_forever()
        except trio.Cancelled:
            self.log.append((trio.current_time(), "cancelled", self.name))
            raise


def spec(child: Scripted, restart: Restart = Restart.PERMANENT, grace: float = 5.0) -> ChildSpec:
    return ChildSpec(name=child.name, target=child, restart=restart, shutdown_grace=grace)


def starts_of(log: list[tuple[float, str, str]]) -> list[str]:
    return [name for _, what, name in log if what == "start"]


async def run_until(sup: Supervisor, stop_at: float) -> None:
    """Run `sup`, ask it to stop at `stop_at`, return once run() returned."""
    with trio.fail_after(stop_at + 1000.0):  # a hang fails the test instead of blocking it
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await trio.sleep_until(stop_at)
            sup.stop()


async def run_bounded(sup: Supervisor, limit: float = 1000.0) -> None:
    """Run `sup` until it returns or raises by itself, failing the test after `limit` seconds."""
    with trio.fail_after(limit):
        await sup.run()


# --- readiness ---------------------------------------------------------------------------------


async def test_ready_only_after_every_child_called_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, str, str]] = []
    a = Scripted("a", [("serve",)], log, ready_delay=1.0)
    b = Scripted("b", [("serve",)], log, ready_delay=2.0)
    rec = Recorder()
    sup = Supervisor("sup", [spec(a), spec(b)], on_event=rec)
    async with trio.open_nursery() as nursery:
        value = await nursery.start(sup.run)
        # Children start one after the other, each only once the previous one is ready.
        assert trio.current_time() == 3.0
        assert value is sup
        assert [(t, n) for t, what, n in log if what == "start"] == [(0.0, "a"), (1.0, "b")]
        assert all(child.running for child in sup.statistics().children)
        assert rec.kinds() == [("started", "a"), ("started", "b"), ("started", None)]
        sup.stop()


async def test_crash_before_ready_is_a_crash_and_readiness_waits_for_the_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, str, str]] = []
    a = Scripted("a", [("crash_before_ready",), ("serve",)], log, ready_delay=1.0)
    b = Scripted("b", [("serve",)], log)
    rec = Recorder()
    sup = Supervisor("sup", [spec(a), spec(b)], backoff=NO_BACKOFF, on_event=rec)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert starts_of(log) == ["a", "a", "b"]
        assert rec.kinds() == [
            ("crashed", "a"),
            ("restarting", "a"),
            ("started", "a"),
            ("started", "b"),
            ("started", None),
        ]
        assert sup.statistics().children[0].last_error == "Boom('a failed to start')"
        sup.stop()


async def test_a_child_that_never_gets_ready_makes_start_raise_the_escalation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, str, str]] = []
    good = Scripted("good", [("serve",)], log)
    broken = Scripted("broken", [("crash_before_ready",)], log)
    sup = Supervisor("sup", [spec(good), spec(broken)], max_restarts=2, backoff=NO_BACKOFF)
    async with trio.open_nursery() as nursery:
        with pytest.raises(SupervisorEscalation) as info:
            await nursery.start(sup.run)
    assert info.value.child == "broken"
    assert starts_of(log) == ["good", "broken", "broken", "broken"]
    assert [n for _, what, n in log if what == "stop"] == ["good"]


async def test_stop_while_a_child_is_still_starting(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[float, str, str]] = []
    slow = Scripted("slow", [("serve",)], log, ready_delay=100.0)
    rec = Recorder()
    sup = Supervisor("sup", [spec(slow, grace=2.0)], on_event=rec)
    with trio.move_on_after(50):  # must not need it
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await trio.sleep(1.0)
            sup.stop()
    # Not ready, ignoring `stopping` while it gets ready: cancelled after its grace.
    assert trio.current_time() == 3.0
    assert log[-1] == (3.0, "cancelled", "slow")
    assert rec.kinds() == [("stopped", "slow"), ("stopped", None)]


# --- strategies --------------------------------------------------------------------------------


async def test_one_for_one_restarts_only_the_dead_child(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, str, str]] = []
    a = Scripted("a", [("serve",)], log)
    b = Scripted("b", [("crash", 1.0), ("serve",)], log)
    c = Scripted("c", [("serve",)], log)
    rec = Recorder()
    sup = Supervisor("sup", [spec(a), spec(b), spec(c)], backoff=NO_BACKOFF, on_event=rec)
    await run_until(sup, 10.0)
    assert starts_of(log) == ["a", "b", "c", "b"]
    assert rec.kinds("crashed", "restarting", "started", "stopped")[4:] == [
        ("crashed", "b"),
        ("restarting", "b"),
        ("started", "b"),
        # the final ordered shutdown: reverse start order
        ("stopped", "c"),
        ("stopped", "b"),
        ("stopped", "a"),
        ("stopped", None),
    ]
    stats = sup.statistics()
    assert [child.restarts for child in stats.children] == [0, 1, 0]
    assert stats.restarts == 1


async def test_one_for_all_stops_the_others_in_reverse_and_restarts_all_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, str, str]] = []
    a = Scripted("a", [("serve",)], log)
    b = Scripted("b", [("crash", 1.0), ("serve",)], log)
    c = Scripted("c", [("serve",)], log)
    rec = Recorder()
    sup = Supervisor(
        "sup",
        [spec(a), spec(b), spec(c)],
        strategy=Strategy.ONE_FOR_ALL,
        backoff=NO_BACKOFF,
        on_event=rec,
    )
    await run_until(sup, 10.0)
    assert rec.kinds()[4:12] == [
        ("crashed", "b"),
        ("restarting", "b"),
        ("stopped", "c"),
        ("stopped", "a"),
        ("started", "a"),
        ("started", "b"),
        ("started", "c"),
        ("stopped", "c"),  # final shutdown at t=10
    ]
    assert [e.strategy for e in rec.of("restarting")] == ["one_for_all"]
    assert [t for t, what, n in log if what == "stop"][:2] == [1.0, 1.0]
    assert [child.restarts for child in sup.statistics().children] == [1, 1, 1]
    assert sup.statistics().restarts == 1


async def test_restart_grace_applies_when_a_sibling_crashed_and_shutdown_grace_at_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A child that cannot finish (a pipeline stage whose downstream crashed) is cancelled at once
    when a sibling's crash restarts it with restart_grace=0, and still gets its whole
    shutdown_grace in an ordered shutdown."""
    log: list[tuple[float, str, str]] = []
    a = Scripted("a", [("crash", 1.0), ("serve",)], log)
    stuck = Scripted("stuck", [("ignore_stop",)], log)
    waits = Scripted("waits", [("ignore_stop",)], log)
    sup = Supervisor(
        "sup",
        [
            spec(a),
            ChildSpec(name="stuck", target=stuck, shutdown_grace=5.0, restart_grace=0),
            spec(waits, grace=3.0),  # no restart_grace: shutdown_grace applies to restarts too
        ],
        strategy=Strategy.ONE_FOR_ALL,
        backoff=NO_BACKOFF,
    )
    await run_until(sup, 20.0)
    cancelled = [(t, n) for t, what, n in log if what == "cancelled"]
    # the crash at 1: "waits" (stopped first) gets 3 s, "stuck" none; the shutdown at 20: 3 + 5 s
    assert cancelled == [(4.0, "waits"), (4.0, "stuck"), (23.0, "waits"), (28.0, "stuck")]
    with pytest.raises(ValueError):
        ChildSpec(name="x", target=stuck, restart_grace=-1)


async def test_rest_for_one_restarts_the_dead_child_and_those_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, str, str]] = []
    a = Scripted("a", [("serve",)], log)
    b = Scripted("b", [("crash", 1.0), ("serve",)], log)
    c = Scripted("c", [("serve",)], log)
    d = Scripted("d", [("serve",)], log)
    rec = Recorder()
    sup = Supervisor(
        "sup",
        [spec(a), spec(b), spec(c), spec(d)],
        strategy=Strategy.REST_FOR_ONE,
        backoff=NO_BACKOFF,
        on_event=rec,
    )
    await run_until(sup, 10.0)
    assert rec.kinds()[5:12] == [
        ("crashed", "b"),
        ("restarting", "b"),
        ("stopped", "d"),
        ("stopped", "c"),
        ("started", "b"),
        ("started", "c"),
        ("started", "d"),
    ]
    assert starts_of(log) == ["a", "b", "c", "d", "b", "c", "d"]
    assert [child.restarts for child in sup.statistics().children] == [0, 1, 1, 1]


async def test_rest_for_one_with_the_last_child_dying_is_one_for_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, str, str]] = []
    a = Scripted("a", [("serve",)], log)
    b = Scripted("b", [("crash", 1.0), ("serve",)], log)
    sup = Supervisor("sup", [spec(a), spec(b)], strategy=Strategy.REST_FOR_ONE, backoff=NO_BACKOFF)
    await run_until(sup, 10.0)
    assert starts_of(log) == ["a", "b", "b"]


async def test_group_restart_skips_finished_temporary_children(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, str, str]] = []
    temp = Scripted("temp", [("exit", 1.0)], log)
    live_temp = Scripted("live_temp", [("serve",)], log)
    b = Scripted("b", [("crash", 2.0), ("serve",)], log)
    rec = Recorder()
    sup = Supervisor(
        "sup",
        [spec(temp, Restart.TEMPORARY), spec(live_temp, Restart.TEMPORARY), spec(b)],
        strategy=Strategy.ONE_FOR_ALL,
        backoff=NO_BACKOFF,
        on_event=rec,
    )
    await run_until(sup, 10.0)
    # The running temporary child is stopped by the group restart but, like the one that
    # had exited, never started again.
    assert starts_of(log) == ["temp", "live_temp", "b", "b"]
    assert rec.kinds()[4:9] == [
        ("exited", "temp"),
        ("crashed", "b"),
        ("restarting", "b"),
        ("stopped", "live_temp"),
        ("started", "b"),
    ]


# --- restart types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "step", "restarted"),
    [
        (Restart.PERMANENT, ("exit", 1.0), True),
        (Restart.PERMANENT, ("crash", 1.0), True),
        (Restart.TRANSIENT, ("exit", 1.0), False),
        (Restart.TRANSIENT, ("crash", 1.0), True),
        (Restart.TEMPORARY, ("exit", 1.0), False),
        (Restart.TEMPORARY, ("crash", 1.0), False),
    ],
)
async def test_restart_types(
    autojump_clock: trio.testing.MockClock,
    restart: Restart,
    step: tuple[object, ...],
    restarted: bool,
) -> None:
    log: list[tuple[float, str, str]] = []
    child = Scripted("x", [step, ("serve",)], log)
    keeper = Scripted("keeper", [("serve",)], log)
    rec = Recorder()
    sup = Supervisor("sup", [spec(child, restart), spec(keeper)], backoff=NO_BACKOFF, on_event=rec)
    await run_until(sup, 10.0)
    assert starts_of(log).count("x") == (2 if restarted else 1)
    exit_kind = "crashed" if step[0] == "crash" else "exited"
    assert (exit_kind, "x") in rec.kinds()
    assert (("restarting", "x") in rec.kinds()) == restarted


async def test_returns_when_no_child_is_left_to_run(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[float, str, str]] = []
    a = Scripted("a", [("exit", 1.0)], log)
    b = Scripted("b", [("crash", 2.0)], log)
    c = Scripted("c", [("exit", 3.0)], log)
    rec = Recorder()
    sup = Supervisor(
        "sup",
        [spec(a, Restart.TRANSIENT), spec(b, Restart.TEMPORARY), spec(c, Restart.TEMPORARY)],
        on_event=rec,
    )
    await run_bounded(sup)
    assert trio.current_time() == 3.0
    assert rec.kinds()[-4:] == [
        ("exited", "a"),
        ("crashed", "b"),
        ("exited", "c"),
        ("exited", None),
    ]


# --- intensity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("max_restarts", [0, 1, 3])
async def test_escalates_on_exactly_the_restart_past_max_restarts(
    autojump_clock: trio.testing.MockClock, max_restarts: int
) -> None:
    log: list[tuple[float, str, str]] = []
    first = Scripted("first", [("serve",)], log)
    crasher = Scripted("crasher", [("crash", 1.0)], log)
    last = Scripted("last", [("serve",)], log)
    rec = Recorder()
    sup = Supervisor(
        "sup",
        [spec(first), spec(crasher), spec(last)],
        max_restarts=max_restarts,
        period=100.0,
        backoff=NO_BACKOFF,
        on_event=rec,
    )
    with pytest.raises(SupervisorEscalation) as info:
        await run_bounded(sup)
    assert info.value.supervisor == "sup"
    assert info.value.child == "crasher"
    assert isinstance(info.value.__cause__, Boom)
    # max_restarts restarts happened; the crash after them escalated.
    assert crasher.starts == max_restarts + 1
    assert trio.current_time() == max_restarts + 1.0
    assert [e.restarts_in_period for e in rec.of("restarting")] == list(range(1, max_restarts + 1))
    assert [e.restarts_in_period for e in rec.of("escalated")] == [max_restarts + 1]
    # All children were shut down, in reverse start order, before the error surfaced.
    assert rec.kinds()[-3:] == [("escalated", "crasher"), ("stopped", "last"), ("stopped", "first")]
    assert [n for _, what, n in log if what == "stop"] == ["last", "first"]
    stats = sup.statistics()
    assert stats.escalations == 1
    assert stats.restarts == max_restarts
    assert not any(child.running for child in stats.children)


async def test_restarts_spread_wider_than_the_period_never_escalate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, str, str]] = []
    crasher = Scripted("crasher", [("crash", 6.0)], log)
    sup = Supervisor("sup", [spec(crasher)], max_restarts=1, period=5.0, backoff=NO_BACKOFF)
    await run_until(sup, 62.0)
    assert crasher.starts == 11


async def test_window_slides(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[float, str, str]] = []
    # Crashes at t=1, 2, 10, 11, 12: with 2 restarts allowed per 5 s only the one at 12 is
    # one too many (10, 11, 12 in a window; 1 and 2 have slid out).
    crasher = Scripted(
        "crasher", [("crash", 1.0), ("crash", 1.0), ("crash", 8.0), ("crash", 1.0)], log
    )
    sup = Supervisor("sup", [spec(crasher)], max_restarts=2, period=5.0, backoff=NO_BACKOFF)
    with pytest.raises(SupervisorEscalation):
        await run_bounded(sup)
    assert trio.current_time() == 12.0
    assert crasher.starts == 5


async def test_nested_supervisor_escalation_is_a_crash_its_parent_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, str, str]] = []
    worker = Scripted("worker", [("crash", 1.0)], log)
    inner_rec, outer_rec = Recorder(), Recorder()
    inner = Supervisor(
        "inner",
        [spec(worker)],
        max_restarts=1,
        period=100.0,
        backoff=NO_BACKOFF,
        on_event=inner_rec,
    )
    sibling = Scripted("sibling", [("serve",)], log)
    outer = Supervisor(
        "outer",
        [spec(sibling), ChildSpec(name="pipeline", target=inner.run)],
        max_restarts=2,
        period=100.0,
        backoff=NO_BACKOFF,
        on_event=outer_rec,
    )
    with pytest.raises(SupervisorEscalation) as info:
        await run_bounded(outer)
    # Each inner run: worker crashes at +1 (restarted), again at +2 (inner escalates).
    # The outer restarts the inner twice, then its third escalation is one too many.
    assert trio.current_time() == 6.0
    assert worker.starts == 6
    assert outer_rec.kinds("crashed", "restarting", "escalated") == [
        ("crashed", "pipeline"),
        ("restarting", "pipeline"),
        ("crashed", "pipeline"),
        ("restarting", "pipeline"),
        ("crashed", "pipeline"),
        ("escalated", "pipeline"),
    ]
    assert len(inner_rec.of("escalated")) == 3
    assert info.value.supervisor == "outer"
    assert info.value.child == "pipeline"
    inner_error = info.value.__cause__
    assert isinstance(inner_error, SupervisorEscalation)
    assert inner_error.supervisor == "inner"
    assert isinstance(inner_error.__cause__, Boom)
    assert "SupervisorEscalation" in (outer_rec.of("crashed")[0].error or "")
    assert inner.statistics().escalations == 3
    # The sibling was left alone by one_for_one until the final shutdown.
    assert starts_of(log).count("sibling") == 1


async def test_a_child_supervisor_that_gave_up_on_a_fatal_error_is_not_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A fatal error (weir.errors.Fatal) is retried within the inner supervisor's intensity, like
    any crash; once the inner one gives up on it, the outer one escalates at once instead of
    restarting the subtree: no crash loop, and the Fatal error is in the cause chain."""
    from weir.errors import Fatal, fatal_in

    class WrongChain(Fatal):
        pass

    class FatalWorker:
        starts = 0

        async def run(self, stopping: trio.Event, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
            self.starts += 1
            task_status.started()
            await trio.sleep(1.0)
            raise WrongChain("the node serves chain 5, configured as chain 1")

    worker = FatalWorker()
    inner = Supervisor("inner", [ChildSpec(name="worker", target=worker.run)], max_restarts=2, period=100.0,
                       backoff=NO_BACKOFF)
    outer_rec = Recorder()
    outer = Supervisor("outer", [ChildSpec(name="pipeline", target=inner.run)], max_restarts=5, period=100.0,
                       backoff=NO_BACKOFF, on_event=outer_rec)
    with pytest.raises(SupervisorEscalation) as info:
        await run_bounded(outer)
    assert worker.starts == 3  # the first run and max_restarts=2 restarts, then the inner gave up
    assert outer_rec.kinds("restarting", "escalated") == [("escalated", "pipeline")]
    assert isinstance(fatal_in(info.value), WrongChain)
    assert "fatal: the node serves chain 5" in str(info.value)


async def test_intensity_counts_exit_times_not_when_a_backoff_let_us_handle_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class High(random.Random):
        def random(self) -> float:
            return 0.99

    log: list[tuple[float, str, str]] = []
    a = Scripted("a", [("crash", 1.0), ("serve",)], log)
    b = Scripted("b", [("crash", 2.0), ("serve",)], log)
    rec = Recorder()
    sup = Supervisor(
        "sup",
        [spec(a), spec(b)],
        max_restarts=1,
        period=5.0,
        backoff=Backoff(initial=10.0, maximum=10.0),
        rng=High(),
        on_event=rec,
    )
    # a crashes at 1 and is restarted after a 9.9 s backoff; b crashed at 2, during that sleep.
    # Handled at 10.9, b's crash still counts at 2: two restarts within 5 s, one too many.
    with pytest.raises(SupervisorEscalation) as info:
        await run_bounded(sup)
    assert info.value.child == "b"
    assert trio.current_time() == pytest.approx(10.9)
    assert [e.restarts_in_period for e in rec.of("escalated")] == [2]


# --- backoff -----------------------------------------------------------------------------------


async def test_backoff_delays_grow_then_reset_after_a_stable_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, str, str]] = []
    # Crashes 1 s after each start, except the 4th start that survives 40 s (> stable_after).
    crasher = Scripted(
        "crasher",
        [("crash", 1.0)] * 3 + [("crash", 40.0)] + [("crash", 1.0)] * 2 + [("serve",)],
        log,
    )
    backoff = Backoff(initial=0.5, maximum=3.0, multiplier=2.0)
    rec = Recorder()
    sup = Supervisor(
        "sup",
        [spec(crasher)],
        max_restarts=100,
        period=10.0,
        backoff=backoff,
        stable_after=30.0,
        rng=random.Random(7),
        on_event=rec,
    )
    await run_until(sup, 200.0)
    restarting = rec.of("restarting")
    attempts = [0, 1, 2, 0, 1, 2]
    twin = random.Random(7)
    assert [e.delay for e in restarting] == [backoff.delay(a, twin) for a in attempts]
    for event, attempt in zip(restarting, attempts, strict=True):
        assert 0.0 <= event.delay <= min(3.0, 0.5 * 2.0**attempt)
    # Each restart happens exactly its delay after the crash.
    crash_times = [t for t, e in rec.events if e.kind == "crashed"]
    start_times = [t for t, what, _ in log if what == "start"][1:]
    assert start_times == pytest.approx(
        [c + e.delay for c, e in zip(crash_times, restarting, strict=True)]
    )


async def test_stop_is_honoured_during_the_backoff_sleep(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class High(random.Random):
        def random(self) -> float:
            return 0.99

    log: list[tuple[float, str, str]] = []
    crasher = Scripted("crasher", [("crash", 1.0)], log)
    rec = Recorder()
    sup = Supervisor(
        "sup",
        [spec(crasher)],
        backoff=Backoff(initial=100.0, maximum=100.0),
        rng=High(),
        on_event=rec,
    )
    await run_until(sup, 2.0)
    assert trio.current_time() == 2.0
    assert rec.of("restarting")[0].delay == pytest.approx(99.0)
    assert crasher.starts == 1
    assert rec.kinds()[-1] == ("stopped", None)


# --- shutdown ----------------------------------------------------------------------------------


async def test_ordered_shutdown_one_child_at_a_time_with_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, str, str]] = []
    a = Scripted("a", [("serve",)], log)
    stubborn = Scripted("stubborn", [("ignore_stop",)], log)
    c = Scripted("c", [("serve",)], log)
    rec = Recorder()
    sup = Supervisor(
        "sup",
        [spec(a), spec(stubborn, grace=2.5), spec(c)],
        on_event=rec,
    )
    stopping = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, stopping)
        await trio.sleep(10.0)
        stopping.set()
    # c stops at once; stubborn ignores `stopping` and is cancelled after exactly 2.5 s; only
    # then is a asked to stop.
    assert [entry for entry in log if entry[1] != "start"] == [
        (10.0, "stop", "c"),
        (12.5, "cancelled", "stubborn"),
        (12.5, "stop", "a"),
    ]
    assert trio.current_time() == 12.5
    stopped = rec.of("stopped")
    assert [e.child for e in stopped] == ["c", "stubborn", "a", None]
    # Being cancelled by our own stop is not a crash.
    assert all(e.error is None for e in stopped)
    assert not rec.of("crashed")


async def test_stop_before_run_makes_the_next_run_return_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, str, str]] = []
    a = Scripted("a", [("serve",)], log)
    sup = Supervisor("sup", [spec(a)])
    sup.stop()
    await run_bounded(sup)
    assert log == []
    # The request covered one run only.
    await run_until(sup, 1.0)
    assert starts_of(log) == ["a"]


async def test_outside_cancellation_propagates_and_is_not_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, str, str]] = []
    a = Scripted("a", [("serve",)], log)
    b = Scripted("b", [("serve",)], log)
    rec = Recorder()
    sup = Supervisor("sup", [spec(a), spec(b)], on_event=rec)
    with trio.move_on_after(5.0) as scope:
        await sup.run()
    assert scope.cancelled_caught
    assert sorted(n for _, what, n in log if what == "cancelled") == ["a", "b"]
    assert rec.kinds() == [("started", "a"), ("started", "b"), ("started", None)]
    assert sup.statistics().restarts == 0
    # The supervisor can run again afterwards.
    await run_until(sup, 6.0)
    assert starts_of(log) == ["a", "b", "a", "b"]


async def test_child_nursery_cancelled_by_our_stop_is_not_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def with_nursery(stopping: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            task_status.started()
            await trio.sleep_forever()

    rec = Recorder()
    sup = Supervisor(
        "sup", [ChildSpec(name="n", target=with_nursery, shutdown_grace=1.0)], on_event=rec
    )
    await run_until(sup, 1.0)
    assert rec.kinds()[-2:] == [("stopped", "n"), ("stopped", None)]
    assert rec.of("stopped")[0].error is None


async def test_exception_group_from_a_child_is_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts = 0

    async def grouped(stopping: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
        nonlocal starts
        starts += 1
        task_status.started()
        if starts > 1:
            await stopping.wait()
            return

        async def fail() -> None:
            await trio.sleep(1.0)
            raise Boom("inner")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
            nursery.start_soon(trio.sleep_forever)

    rec = Recorder()
    sup = Supervisor("sup", [ChildSpec(name="g", target=grouped)], backoff=NO_BACKOFF, on_event=rec)
    await run_until(sup, 5.0)
    crashed = rec.of("crashed")
    assert len(crashed) == 1
    assert "ExceptionGroup" in (crashed[0].error or "")
    assert "Boom('inner')" in (crashed[0].error or "")
    assert starts == 2


# --- events, logs, statistics, validation ------------------------------------------------------


async def test_restart_and_escalation_are_logged_with_child_error_and_strategy(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[tuple[float, str, str]] = []
    crasher = Scripted("crasher", [("crash", 1.0)], log)
    sup = Supervisor(
        "sup", [spec(crasher)], strategy=Strategy.REST_FOR_ONE, max_restarts=1, backoff=NO_BACKOFF
    )
    with (
        caplog.at_level(logging.INFO, logger="weir.supervision"),
        pytest.raises(SupervisorEscalation),
    ):
        await run_bounded(sup)
    records = {r.weir_event.kind: r for r in caplog.records if hasattr(r, "weir_event")}  # type: ignore[attr-defined]
    for kind, level in [("restarting", logging.WARNING), ("escalated", logging.ERROR)]:
        message = records[kind].getMessage()
        assert records[kind].levelno == level
        assert "crasher" in message
        assert "Boom('crasher crashed')" in message
        assert "rest_for_one" in message


async def test_a_failing_on_event_callback_does_not_break_supervision(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: SupervisionEvent) -> None:
        raise RuntimeError("observer bug")

    log: list[tuple[float, str, str]] = []
    a = Scripted("a", [("crash", 1.0), ("serve",)], log)
    sup = Supervisor("sup", [spec(a)], backoff=NO_BACKOFF, on_event=broken)
    with caplog.at_level(logging.ERROR, logger="weir.supervision"):
        await run_until(sup, 3.0)
    assert a.starts == 2
    assert any("on_event callback failed" in r.getMessage() for r in caplog.records)


async def test_statistics_is_a_frozen_snapshot(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[float, str, str]] = []
    a = Scripted("a", [("crash", 1.0), ("serve",)], log)
    sup = Supervisor("sup", [spec(a)], backoff=NO_BACKOFF)
    before = sup.statistics()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        running = sup.statistics()
        await trio.sleep(2.0)
        after = sup.statistics()
        sup.stop()
    assert before.children[0].running is False
    assert running.children[0].running is True
    assert running.restarts == 0
    assert after.restarts == 1
    assert after.children[0].restarts == 1
    assert after.children[0].last_error == "Boom('a crashed')"
    assert sup.statistics().children[0].running is False
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        after.restarts = 5  # type: ignore[misc]


def test_duplicate_child_names_are_rejected() -> None:
    async def noop(stopping: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()

    with pytest.raises(ValueError, match="duplicate"):
        Supervisor("sup", [ChildSpec(name="x", target=noop), ChildSpec(name="x", target=noop)])
    with pytest.raises(ValueError):
        ChildSpec(name="x", target=noop, shutdown_grace=-1.0)
    with pytest.raises(ValueError):
        Supervisor("sup", [], max_restarts=-1)


async def test_running_twice_at_once_is_an_error(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[float, str, str]] = []
    sup = Supervisor("sup", [spec(Scripted("a", [("serve",)], log))])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with pytest.raises(RuntimeError, match="already running"):
            await sup.run()
        sup.stop()


async def test_empty_supervisor_returns_at_once(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    sup = Supervisor("sup", [], on_event=rec)
    await run_bounded(sup)
    assert rec.kinds() == [("started", None), ("exited", None)]
