"""Values of the supervision vocabulary: child specs, restart types, strategies, events, statistics.

Everything here is an immutable value; the live machinery is in :mod:`weir.supervision.supervisor`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable

import attrs


class Restart(enum.Enum):
    """When a child that has exited is started again (OTP restart types)."""

    #: Always restarted, even after a normal return.
    PERMANENT = "permanent"
    #: Restarted only after an abnormal exit (an exception).
    TRANSIENT = "transient"
    #: Never restarted.
    TEMPORARY = "temporary"

    def wants_restart(self, crashed: bool) -> bool:
        """Whether a child of this type is restarted after an exit.

        Args:
          crashed: True if the child raised, False if it returned normally.
        """
        if self is Restart.PERMANENT:
            return True
        if self is Restart.TRANSIENT:
            return crashed
        return False


class Strategy(enum.Enum):
    """Which children are restarted when one of them dies (OTP restart strategies)."""

    #: Restart only the child that died.
    ONE_FOR_ONE = "one_for_one"
    #: Stop every other child, then restart all of them.
    ONE_FOR_ALL = "one_for_all"
    #: Stop the children started after the dead one, then restart it and them.
    REST_FOR_ONE = "rest_for_one"


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _non_empty(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value:
        raise ValueError(f"{attribute.name} must not be empty")


@attrs.frozen(kw_only=True)
class ChildSpec:
    """How to run one child of a supervisor.

    The target is called as ``await target(stopping, task_status=task_status)``. It counts as
    started once it calls ``task_status.started()``; returning is a normal exit and raising is a
    crash. It should return soon after ``stopping`` is set, or it is cancelled after
    ``shutdown_grace`` seconds.

    Attributes:
      name: Unique name of the child within its supervisor.
      target: The child's async function.
      restart: When the child is restarted after it exits.
      shutdown_grace: Seconds between setting ``stopping`` and cancelling the child.
      restart_grace: The same when the child is stopped because a sibling crashed (one_for_all,
        rest_for_one); None means ``shutdown_grace``. 0 suits a child whose work in flight is
        redone after the restart anyway: waiting for it to finish would only wait for a sibling
        that is gone (a pipeline stage cannot hand its data on to a crashed stage after it).
    """

    name: str = attrs.field(validator=_non_empty)
    target: Callable[..., Awaitable[None]]
    restart: Restart = Restart.PERMANENT
    shutdown_grace: float = attrs.field(default=5.0, validator=_non_negative)
    restart_grace: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(_non_negative)
    )


@attrs.frozen(kw_only=True)
class SupervisionEvent:
    """Something a supervisor did or saw; passed to ``on_event`` and logged.

    Attributes:
      supervisor: Name of the supervisor.
      kind: One of ``"started"``, ``"exited"``, ``"crashed"``, ``"restarting"``, ``"escalated"``,
        ``"stopped"``. With ``child`` set: the child became ready, returned on its own, raised,
        is about to be restarted (with the strategy applied), made the supervisor give up, or
        was stopped by the supervisor. With ``child=None``: the supervisor itself is ready
        (``"started"``), returned because no child is left to run (``"exited"``) or finished an
        ordered shutdown on request (``"stopped"``).
      child: Name of the child concerned, or None for the supervisor itself.
      strategy: Value of the supervisor's strategy, e.g. ``"one_for_one"``.
      error: ``repr()`` of the child's exception, if there was one.
      delay: Backoff in seconds before the restart (``"restarting"`` only).
      restarts_in_period: Restarts counted in the intensity window, this one included
        (``"restarting"`` and ``"escalated"`` only).
    """

    supervisor: str
    kind: str
    child: str | None
    strategy: str
    error: str | None = None
    delay: float = 0.0
    restarts_in_period: int = 0


@attrs.frozen(kw_only=True)
class ChildStatistics:
    """Snapshot of one child of a supervisor.

    Attributes:
      name: The child's name.
      running: True while the child is ready and has not exited.
      restarts: How many times the child has been started again after its first start.
      last_error: ``repr()`` of the last exception the child raised, or None.
    """

    name: str
    running: bool
    restarts: int
    last_error: str | None


@attrs.frozen(kw_only=True)
class SupervisorStatistics:
    """Snapshot of a supervisor, returned by ``Supervisor.statistics()``.

    Attributes:
      name: The supervisor's name.
      strategy: Its restart strategy.
      restarts: Restart decisions taken (one per dead child, however many children it restarted).
      escalations: How many times it gave up and raised SupervisorEscalation.
      children: One entry per child, in start order.
    """

    name: str
    strategy: Strategy
    restarts: int
    escalations: int
    children: tuple[ChildStatistics, ...]
