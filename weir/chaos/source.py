"""What the chaos engine needs from a source: :class:`ChaosSource`, the :class:`Load` it is run
at, and the :class:`RunningSource` it opens.

The engine (:mod:`weir.chaos.suite`) owns everything that is the same for every network: Redis
and its proxy (``redis_link``), ``weir run`` as a process, the schedule, the samplers, the
drain, SIGTERM, the checker and the verdicts. A source owns its simulator process and the proxy
in front of it, knows what that simulator offers, and says how weir reaches it. The Farcaster
source (:mod:`weir.chaos.farcaster`) is the reference implementation.

A new source (e.g. AT Protocol, Ethereum) is an attrs frozen class providing:

- ``name``: weir's source name, as in the Redis keys ``{weir:<name>:<partition>}``;
- ``partitions``: the partitions weir ingests in the run (the checker reads each one);
- ``settings``: weir ``--set`` lines for every scenario of this source (enable it, disable the
  others — ``farcaster.enabled`` is on by default —, timeouts tuned for the recovery targets);
- ``network_targets``: the schedule targets it provides (a ``<name>_link`` proxy target takes
  the proxy faults; a control target takes kinds the schedule knows, see
  :data:`weir.chaos.schedule.KINDS`), named so a scenario's faults say what they hit;
- ``offered(load)``: pure, run in a worker thread: per partition, the events the simulator
  offers under ``load``, as :class:`~weir.chaos.checker.OfferedEvent` s in the order the
  stream must hold them (``(position, sub, data)``; a retraction is an entry like any other), and
  the cursor a full drain leaves (:class:`Offer`; positions are the source's own: event id, seq,
  ``time_us``, sequence number);
- ``open(load, workdir, seed)``: an async context manager that starts the simulator (as a
  process, so a run can be judged like production; its history ready, its live phase held until
  weir connects, so the load runs under the schedule however long weir takes to start) and a
  :func:`~weir.chaos.proxy.open_proxy` in front of it, and yields a :class:`RunningSource`.

The engine calls the final drain done when every partition's sampled cursor equals its
:attr:`Offer.final_cursor`, unless the running source gives its own ``drained`` test; and it judges
each partition position by position against the offer, unless the running source gives its own
``compare`` (a chain's stream is replayed instead: :mod:`weir.chaos.ethereum`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

import attrs

from weir.chaos.checker import OfferedEvent, PartitionReport

__all__ = ["ChaosSource", "Load", "Offer", "RunningSource"]


@attrs.frozen(kw_only=True)
class Load:
    """How much a scenario's simulator produces.

    Attributes:
        seed: the data's seed (the schedule's, so a replayed schedule gets the same data).
        rate: events/s per partition once the history is out.
        history: events per partition that exist when the simulator starts.
        seconds: how long it produces at ``rate``, from when weir first connects (the simulator
            holds its live phase until then): the lead to weir's first persisted event, the
            schedule and the tail.
    """

    seed: int
    rate: float
    history: int
    seconds: float


@attrs.frozen(kw_only=True)
class Offer:
    """One partition's offered events (stream order) and the cursor after a full drain."""

    events: Sequence[OfferedEvent]
    final_cursor: int

    @classmethod
    def of(cls, events: Sequence[OfferedEvent]) -> Offer:
        """The usual case: the drain ends at the last event's position."""
        if not events:
            raise ValueError("a partition that offers nothing has no final cursor: give it explicitly")
        return cls(events=events, final_cursor=events[-1][0])


@attrs.frozen(kw_only=True)
class RunningSource:
    """A source's simulator, up and behind its proxy.

    Attributes:
        weir_args: command-line arguments that point ``weir run`` at the proxy (e.g.
            ``("--farcaster-url", url)``, or ``("--config", path)`` for a source configured in TOML).
        targets: the schedule targets it provides, by name (see :attr:`ChaosSource.network_targets`).
        finish: called once weir has exited: stops the simulator and returns problems (e.g. its own
            record of what it offered differs from the ``offered`` the checker uses); empty if none.
        drained: for a source whose stream cannot be known in advance (a chain with reorgs, events
            whose positions depend on arrival order): whether the full drain is done, given the
            Redis URL (direct, not through the proxy; polled; e.g. the cursor's token is the final
            head's). None: every partition's sampled cursor equals
            its :attr:`Offer.final_cursor`.
        compare: the source's own comparison of a partition, used instead of
            :func:`~weir.chaos.checker.compare_partition` (see :func:`~weir.chaos.checker.check_run`),
            e.g. :func:`~weir.chaos.checker.compare_chain` with the simulator's final chain, known
            once ``finish`` has read its record. None: the offered events, position by position.
    """

    weir_args: tuple[str, ...]
    targets: Mapping[str, Any]
    finish: Callable[[Mapping[str, Offer]], Awaitable[list[str]]]
    drained: Callable[[str], Awaitable[bool]] | None = None
    compare: Callable[..., PartitionReport] | None = None


class ChaosSource(Protocol):
    """A network the chaos suite can drive (see the module docstring for what each member means)."""

    @property
    def name(self) -> str: ...

    @property
    def partitions(self) -> tuple[str, ...]: ...

    @property
    def settings(self) -> tuple[str, ...]: ...

    @property
    def network_targets(self) -> tuple[str, ...]: ...

    def offered(self, load: Load) -> dict[str, Offer]: ...

    def open(self, load: Load, workdir: Path, seed: int) -> AbstractAsyncContextManager[RunningSource]: ...
