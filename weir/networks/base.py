"""What the service needs from a network: its partitions, a source actor per partition, a filter."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Protocol

import attrs

from weir.actors.filter import Predicate
from weir.config import Config
from weir.sinks.redis_sink import Cursor
from weir.supervision import Backoff, CircuitBreaker

ReadCursor = Callable[[], Awaitable[Cursor | None]]
#: The fields (without ``data``) of the partition's stream entries at positions from the given one on.
ReadSince = Callable[[int], Awaitable[list[dict[str, str]]]]


@attrs.frozen(kw_only=True)
class NetworkContext:
    """Shared services a network's sources may use."""

    backoff: Backoff
    rng: random.Random
    redis_breaker: CircuitBreaker


class Network(Protocol):
    """One network (a source name in Redis) and how to ingest it.

    ``source_stats`` objects are the source actors' live counters; the service reads at least
    ``connected``, ``received``, ``reconnects``, ``dead_letters``, ``gaps`` and ``last_id`` from them.
    """

    name: ClassVar[str]

    def __init__(self, config: Config, context: NetworkContext) -> None: ...

    @staticmethod
    def enabled(config: Config) -> bool: ...

    async def partitions(self) -> list[str]:
        """The partitions to ingest (may ask the network, waiting while it is unreachable)."""
        ...

    def new_source_stats(self) -> Any: ...

    def source(self, partition: str, *, read_cursor: ReadCursor, read_since: ReadSince, stats: Any) -> Callable[..., Awaitable[None]]:
        """A connection actor bound to everything but ``send``: called as ``target(stopping, send=..., task_status=...)``.

        ``read_since`` is for sources whose positions are not identities (Jetstream): what they
        persisted lately, to recognise it when the network sends it again after a restart.
        """
        ...

    def predicate(self) -> Predicate | None: ...
