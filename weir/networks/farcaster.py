"""Farcaster (Snapchain gRPC): one partition per user shard, named by its number."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import trio

from weir.actors.farcaster import (
    SOURCE,
    GrpcTarget,
    ShardStats,
    discover_shards,
    is_transient,
    load_transport,
    run_shard_connection,
)
from weir.actors.filter import Predicate
from weir.codecs.farcaster_keys import (
    HUB_EVENT_TYPE_BY_NAME,
    MESSAGE_TYPE_BY_NAME,
    HubEventKeys,
)
from weir.config import Config, FarcasterSettings
from weir.networks.base import NetworkContext, ReadCursor, ReadSince
from weir.redact import redact_url

log = logging.getLogger("weir.networks.farcaster")


def key_filter(settings: FarcasterSettings) -> Callable[[HubEventKeys], bool] | None:
    """The user's filter on scanned keys: event types, fids, message types (all must match).

    It runs in the source, before Event objects exist (see ShardReader.keep); event types are also
    sent to the node, so most unwanted types never arrive.
    """
    kinds = frozenset(HUB_EVENT_TYPE_BY_NAME[name.upper()] for name in settings.event_types)
    fids = settings.fids
    types = frozenset(MESSAGE_TYPE_BY_NAME[name.upper()] for name in settings.message_types)
    if not (kinds or fids or types):
        return None

    def keep(keys: HubEventKeys) -> bool:
        if kinds and keys.event_type not in kinds:
            return False
        if fids and keys.fid not in fids:
            return False
        if types and keys.msg_type not in types:
            return False
        return True

    return keep


class FarcasterNetwork:
    name: ClassVar[str] = SOURCE

    def __init__(self, config: Config, context: NetworkContext) -> None:
        self.settings = config.farcaster
        self.context = context
        sup = config.supervision
        # One breaker per node, shared by its shards: a node that is down is not hammered by each.
        self.node_breaker = sup.breaker(f"snapchain {redact_url(self.settings.url)}")

    @staticmethod
    def enabled(config: Config) -> bool:
        return config.farcaster.enabled

    async def partitions(self) -> list[str]:
        load_transport()  # here, before the pipelines start, not in their first connection
        if self.settings.shards:
            return [str(shard) for shard in self.settings.shards]
        return [str(shard) for shard in await self._discover()]

    async def _discover(self) -> list[int]:
        """GetInfo until the node answers: at start-up a node that is down is waited for, loudly."""
        target = GrpcTarget.from_url(self.settings.url)
        attempt = 0
        while True:
            try:
                shards = await discover_shards(target, timeout=self.settings.connect_timeout)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = self.context.backoff.delay(attempt, self.context.rng)
                attempt += 1
                log.warning("GetInfo on %s failed (%s); retrying in %.2fs", target, exc, delay)
                await trio.sleep(delay)
                continue
            if not shards:
                raise RuntimeError(f"{target} reports no user shards")
            log.info("%s has user shards %s", target, shards)
            return shards

    def new_source_stats(self) -> ShardStats:
        return ShardStats()

    def source(self, partition: str, *, read_cursor: ReadCursor, read_since: ReadSince | None = None,
               stats: Any) -> Callable[..., Awaitable[None]]:
        async def read_position() -> int | None:
            cursor = await read_cursor()
            return None if cursor is None else cursor.position

        return functools.partial(
            run_shard_connection,
            settings=self.settings,
            shard=int(partition),
            read_cursor=read_position,
            stats=stats,
            backoff=self.context.backoff,
            breaker=self.node_breaker,
            keep=key_filter(self.settings),
            rng=self.context.rng,
        )

    def predicate(self) -> Predicate | None:
        return None  # filtering happens in the source, on scanned keys (key_filter)
