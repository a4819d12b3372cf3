"""An OTP-style supervisor for trio: restart strategies, restart intensity, backoff, escalation.

Each child runs in its own wrapper task with its own cancel scope. The wrapper turns the child's
exit (return, exception) into a report on a memory channel that the supervisor's main loop reads,
so a crash never propagates through the nursery: the supervisor observes it and decides.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from weir.errors import fatal_in

from .backoff import Backoff
from .intensity import RestartWindow
from .spec import (
    ChildSpec,
    ChildStatistics,
    Restart,
    Strategy,
    SupervisionEvent,
    SupervisorStatistics,
)

logger = logging.getLogger("weir.supervision")

# Log level per event kind: what needs a human's attention is a warning or an error.
_LEVELS = {
    "started": logging.INFO,
    "exited": logging.INFO,
    "stopped": logging.INFO,
    "crashed": logging.WARNING,
    "restarting": logging.WARNING,
    "escalated": logging.ERROR,
}


# The ``event`` field of each kind's log record (machine-readable logs, see weir/logs.py).
_LOG_EVENTS = {
    "started": "start",
    "exited": "exit",
    "stopped": "stop",
    "crashed": "crash",
    "restarting": "restart",
    "escalated": "escalation",
}


# Backoff is frozen, so one shared default instance is safe.
_DEFAULT_BACKOFF = Backoff()


class SupervisorEscalation(Exception):
    """A supervisor gave up: a restart would have exceeded its restart intensity.

    Raised by ``Supervisor.run()`` after all its children were shut down, with the exception
    of the child that died last chained as ``__cause__`` (None if it returned normally).

    Attributes:
      supervisor: Name of the supervisor that gave up.
      child: Name of the child whose exit was one restart too many.
    """

    def __init__(self, supervisor: str, child: str, detail: str = "") -> None:
        self.supervisor = supervisor
        self.child = child
        message = f"supervisor {supervisor!r} gave up after child {child!r} exited"
        super().__init__(f"{message}: {detail}" if detail else message)


@attrs.define(eq=False)
class _Child:
    """A child of the supervisor across its restarts."""

    spec: ChildSpec
    index: int
    #: The live instance, from the start until its exit is handled or it was stopped.
    current: _Instance | None = None
    #: A TEMPORARY child that has exited or was stopped: never started again in this run.
    removed: bool = False
    starts: int = 0
    last_error: str | None = None


@attrs.define(eq=False)
class _Instance:
    """One start of a child: its stop request, its cancel scope and how it ended."""

    child: _Child
    stopping: trio.Event = attrs.field(factory=trio.Event)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)
    ready: bool = False
    #: Set once the supervisor asked it to stop: its exit is then not a crash nor a restart.
    stopped_by_us: bool = False
    #: When it is cancelled if it has not returned by then (set by the first stop request).
    kill_at: float | None = None
    error: Exception | None = None
    exited_at: float = 0.0


class _ReadyStatus:
    """The task status handed to a child: records readiness, then forwards to trio's."""

    __slots__ = ("_inner", "_instance")

    def __init__(self, instance: _Instance, inner: trio.TaskStatus[Any]) -> None:
        self._instance = instance
        self._inner = inner

    def started(self, value: Any = None) -> None:
        self._inner.started(value)
        self._instance.ready = True


# Put on the exit channel by stop() to wake the main loop.
_STOP = object()


def _crash_of(exc: BaseException) -> Exception | None:
    """The part of a child's exception that counts as a crash.

    Returns:
      None if the exception must propagate instead: pure cancellation (ours is absorbed by the
      child's cancel scope, anyone else's belongs to them) or a KeyboardInterrupt/SystemExit.
    """
    if isinstance(exc, BaseExceptionGroup):
        # A child's own nursery wraps the Cancelled we injected together with real errors.
        _, rest = exc.split(trio.Cancelled)
        return rest if isinstance(rest, Exception) else None
    if isinstance(exc, Exception):
        return exc
    return None


class Supervisor:
    """Runs children, restarts them by strategy, and gives up past a restart intensity.

    ``run()`` has the child signature, so a supervisor can be the child of another one:
    ``ChildSpec(name="pipeline", target=inner.run)``; its escalation is then a crash that the
    parent handles with its own strategy.

    Args:
      name: Name used in events, logs and errors.
      children: Child specs, in start order; names must be unique.
      strategy: Which children are restarted when one dies.
      max_restarts: Restarts allowed within ``period`` before escalating.
      period: Width in seconds of the restart intensity window.
      backoff: Delay policy before each restart.
      stable_after: Seconds without a restart after which the backoff starts over.
      rng: Source of backoff jitter; seed it for reproducible runs.
      on_event: Called synchronously with every SupervisionEvent.

    Raises:
      ValueError: On duplicate child names or negative limits.
    """

    def __init__(
        self,
        name: str,
        children: Sequence[ChildSpec],
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        period: float = 5.0,
        backoff: Backoff = _DEFAULT_BACKOFF,
        stable_after: float = 30.0,
        rng: random.Random | None = None,
        on_event: Callable[[SupervisionEvent], None] | None = None,
    ) -> None:
        names = [spec.name for spec in children]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate child names in supervisor {name!r}: {duplicates}")
        if stable_after < 0:
            raise ValueError(f"stable_after must be >= 0, got {stable_after}")
        self._name = name
        self._strategy = strategy
        self._children = [_Child(spec, index) for index, spec in enumerate(children)]
        self._window = RestartWindow(max_restarts=max_restarts, period=period)
        self._backoff = backoff.state(rng if rng is not None else random.Random())
        self._stable_after = stable_after
        self._on_event = on_event
        self._restarts = 0
        self._escalations = 0
        # A stop request covers the current run, or the next one if none is active.
        self._stop_requested = trio.Event()
        self._running = False
        self._nursery: trio.Nursery | None = None
        self._send: trio.MemorySendChannel[object] | None = None
        self._pending: list[_Child] = []
        self._last_restart_at: float | None = None
        self._escalation: tuple[SupervisorEscalation, Exception | None] | None = None

    def __repr__(self) -> str:
        return f"<Supervisor {self._name!r} {self._strategy.value} children={len(self._children)}>"

    @property
    def name(self) -> str:
        """The supervisor's name."""
        return self._name

    def stop(self) -> None:
        """Ask for an ordered shutdown, as setting ``run()``'s ``stopping`` event does.

        Called while no run is active, it makes the next ``run()`` return at once.
        """
        self._stop_requested.set()
        if self._send is not None:
            self._send.send_nowait(_STOP)

    def statistics(self) -> SupervisorStatistics:
        """Return a snapshot of the restart counters and of each child."""
        return SupervisorStatistics(
            name=self._name,
            strategy=self._strategy,
            restarts=self._restarts,
            escalations=self._escalations,
            children=tuple(
                ChildStatistics(
                    name=child.spec.name,
                    running=_is_running(child),
                    restarts=max(0, child.starts - 1),
                    last_error=child.last_error,
                )
                for child in self._children
            ),
        )

    async def run(
        self,
        stopping: trio.Event | None = None,
        *,
        task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start the children in order and supervise them until stopped or out of children.

        Calls ``task_status.started(self)`` once every child has called its own
        ``task_status.started()``. A stop requested before that point returns without it.

        Args:
          stopping: When set, shut the children down (reverse start order, each with its
            grace) and return.
          task_status: Receives the supervisor once all children are ready.

        Returns:
          After an ordered shutdown on request, or once every child has exited and none is to
          be restarted.

        Raises:
          SupervisorEscalation: A restart would have exceeded ``max_restarts`` within
            ``period``; all children were shut down first.
          RuntimeError: The supervisor is already running.
        """
        if self._running:
            raise RuntimeError(f"supervisor {self._name!r} is already running")
        self._running = True
        send, receive = trio.open_memory_channel[object](math.inf)
        self._begin_run(send)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if stopping is not None:
                    nursery.start_soon(self._stop_when_set, stopping)
                await self._supervise(receive, task_status)
                # Only the stop watcher can be left.
                nursery.cancel_scope.cancel()
        finally:
            self._running = False
            self._nursery = None
            self._send = None
            self._stop_requested = trio.Event()
            send.close()
            receive.close()
        if self._escalation is not None:
            escalation, cause = self._escalation
            self._escalation = None
            # Raised here, outside the nursery, so the caller gets it bare, not in a group.
            raise escalation from cause

    def _begin_run(self, send: trio.MemorySendChannel[object]) -> None:
        """Reset the per-run state: a new run is a fresh supervisor, as in OTP."""
        self._send = send
        self._window.clear()
        self._backoff.reset()
        self._last_restart_at = None
        self._escalation = None
        self._pending = list(self._children)
        for child in self._children:
            child.current = None
            child.removed = False

    async def _stop_when_set(self, stopping: trio.Event) -> None:
        await stopping.wait()
        self.stop()

    async def _supervise(
        self, receive: trio.MemoryReceiveChannel[object], task_status: trio.TaskStatus[Supervisor]
    ) -> None:
        """The main loop: start what is pending, handle exits, until stopped or done."""
        announced = False
        while not self._stop_requested.is_set() and self._escalation is None:
            # Exits already reported are handled before the next start, so a start never
            # races a restart decision that would stop it again.
            try:
                message = receive.receive_nowait()
            except trio.WouldBlock:
                pass
            else:
                await self._handle(message)
                continue
            if self._pending:
                await self._start(self._pending.pop(0))
                continue
            if not announced:
                announced = True
                task_status.started(self)
                self._emit("started", None)
            if all(child.current is None for child in self._children):
                self._emit("exited", None)
                return
            await self._handle(await receive.receive())
        await self._shutdown()
        if self._escalation is None:
            self._emit("stopped", None)

    async def _start(self, child: _Child) -> None:
        """Start one child and wait until it is ready (or has already exited)."""
        assert self._nursery is not None
        instance = _Instance(child)
        child.current = instance
        child.starts += 1
        async with trio.open_nursery() as guard:
            # A child slow to become ready must not hold up a stop request.
            guard.start_soon(self._stop_if_requested, instance)
            await self._nursery.start(self._child_main, instance)
            guard.cancel_scope.cancel()
        if instance.ready:
            self._emit("started", child)

    async def _stop_if_requested(self, instance: _Instance) -> None:
        await self._stop_requested.wait()
        await self._stop_instance(instance)

    async def _child_main(self, instance: _Instance, *, task_status: trio.TaskStatus[None]) -> None:
        """Wrapper task of one child start: run it, then report how it ended."""
        assert self._send is not None
        send = self._send
        try:
            with instance.scope:
                try:
                    await instance.child.spec.target(
                        instance.stopping, task_status=_ReadyStatus(instance, task_status)
                    )
                except BaseException as exc:
                    crash = _crash_of(exc)
                    if crash is None:
                        raise
                    instance.error = crash
        finally:
            instance.exited_at = trio.current_time()
            instance.done.set()
        if not instance.ready:
            # Exited before ready: let nursery.start() return; the report below says how.
            task_status.started()
        send.send_nowait(instance)

    async def _handle(self, message: object) -> None:
        """Apply restart type, intensity, backoff and strategy to one reported exit."""
        if message is _STOP:
            return
        assert isinstance(message, _Instance)
        instance, child = message, message.child
        if instance.stopped_by_us or child.current is not instance:
            return
        child.current = None
        error = instance.error
        if error is not None:
            child.last_error = repr(error)
            self._emit("crashed", child, error=error)
        else:
            self._emit("exited", child)
        if not child.spec.restart.wants_restart(crashed=error is not None):
            child.removed = child.spec.restart is Restart.TEMPORARY
            return

        # The exit time, not the time we got to it: a backoff sleep must not dilute intensity.
        now = instance.exited_at
        count = self._window.record(now)
        # A child supervisor that gave up on a fatal error is not restarted: it already retried
        # within its own intensity, and the error needs an operator (weir.errors).
        fatal = fatal_in(error) if isinstance(error, SupervisorEscalation) else None
        if self._window.exceeded(count) or fatal is not None:
            self._escalations += 1
            self._emit("escalated", child, error=error, restarts_in_period=count)
            detail = f"fatal: {fatal}" if fatal is not None else (
                f"{count} restarts within {self._window.period}s exceed max_restarts="
                f"{self._window.max_restarts}"
            )
            self._escalation = (SupervisorEscalation(self._name, child.spec.name, detail), error)
            return
        if self._last_restart_at is not None and now - self._last_restart_at >= self._stable_after:
            self._backoff.reset()
        self._last_restart_at = now
        delay = self._backoff.next_delay()
        self._restarts += 1
        self._emit("restarting", child, error=error, delay=delay, restarts_in_period=count)

        group = self._group(child)
        for other in reversed(group):
            if other.current is not None:
                await self._stop_instance(other.current, for_restart=True)
        with trio.move_on_after(delay):
            await self._stop_requested.wait()
        if self._stop_requested.is_set():
            return
        restart = {c for c in group if not c.removed} | set(self._pending)
        self._pending = sorted(restart, key=lambda c: c.index)

    def _group(self, child: _Child) -> list[_Child]:
        """The children the strategy restarts when ``child`` dies, in start order."""
        if self._strategy is Strategy.ONE_FOR_ALL:
            return list(self._children)
        if self._strategy is Strategy.REST_FOR_ONE:
            return self._children[child.index :]
        return [child]

    async def _shutdown(self) -> None:
        """Stop every live child, one at a time, in reverse start order."""
        self._pending.clear()
        for child in reversed(self._children):
            if child.current is not None:
                await self._stop_instance(child.current)

    async def _stop_instance(self, instance: _Instance, *, for_restart: bool = False) -> None:
        """Set the child's ``stopping``, give it its grace, then cancel it; wait until it ends.

        ``for_restart``: stopped because a sibling crashed (its ``restart_grace`` applies).
        Safe to call again for the same instance: the grace runs from the first request.
        """
        instance.stopped_by_us = True
        instance.stopping.set()
        if instance.kill_at is None:
            spec = instance.child.spec
            grace = spec.restart_grace if for_restart and spec.restart_grace is not None else spec.shutdown_grace
            instance.kill_at = trio.current_time() + grace
        with trio.move_on_at(instance.kill_at):
            await instance.done.wait()
        if not instance.done.is_set():
            instance.scope.cancel()
            await instance.done.wait()
        child = instance.child
        if child.current is instance:
            child.current = None
            if child.spec.restart is Restart.TEMPORARY:
                child.removed = True
            if instance.error is not None:
                child.last_error = repr(instance.error)
            self._emit("stopped", child, error=instance.error)

    def _emit(
        self,
        kind: str,
        child: _Child | None,
        *,
        error: BaseException | None = None,
        delay: float = 0.0,
        restarts_in_period: int = 0,
    ) -> None:
        event = SupervisionEvent(
            supervisor=self._name,
            kind=kind,
            child=child.spec.name if child is not None else None,
            strategy=self._strategy.value,
            error=repr(error) if error is not None else None,
            delay=delay,
            restarts_in_period=restarts_in_period,
        )
        details = [f"strategy={event.strategy}"]
        if event.error is not None:
            details.append(f"error={event.error}")
        if kind == "restarting":
            details.append(f"delay={event.delay:.3f}s")
        if kind in ("restarting", "escalated"):
            details.append(f"restarts_in_period={event.restarts_in_period}")
        logger.log(
            _LEVELS[kind],
            "supervisor %s: %s %s (%s)",
            event.supervisor,
            f"child {event.child}" if event.child is not None else "supervisor",
            kind,
            " ".join(details),
            extra={
                "weir_event": event,
                "event": _LOG_EVENTS[kind],
                "supervisor": event.supervisor,
                "child": event.child,
                "strategy": event.strategy,
                "error": event.error,
                "delay": round(event.delay, 3),
                "restarts_in_period": event.restarts_in_period,
            },
        )
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                # An observer's bug must not take the supervision tree down with it.
                logger.exception("supervisor %s: on_event callback failed", self._name)


def _is_running(child: _Child) -> bool:
    instance = child.current
    return instance is not None and instance.ready and not instance.done.is_set()
