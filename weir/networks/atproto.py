"""AT Protocol (relay firehose or Jetstream): one partition per configured server.

The filter runs inside the source (before records are read from the CAR), so :meth:`predicate`
is None: by the time events exist, everything unwanted is already gone.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

from weir.actors.atproto import (
    SOURCE,
    AtprotoStats,
    ZstdDictionary,
    default_partition,
    dictionary_source,
    run_atproto_connection,
)
from weir.actors.filter import Predicate
from weir.config import Config
from weir.networks.base import NetworkContext, ReadCursor, ReadSince
from weir.redact import redact_url


class AtprotoNetwork:
    name: ClassVar[str] = SOURCE

    def __init__(self, config: Config, context: NetworkContext) -> None:
        self.settings = config.atproto
        self.context = context
        sup = config.supervision
        url = self.settings.url if self.settings.mode == "firehose" else self.settings.jetstream_url
        self.breaker = sup.breaker(f"atproto {redact_url(url)}")
        # Jetstream with compression: the dictionary, fetched once (a URL is cached in weir's data directory).
        source = dictionary_source(self.settings)
        self.dictionary = None if source is None else ZstdDictionary(
            source, Path(config.redis.data_dir), timeout=self.settings.connect_timeout)

    @staticmethod
    def enabled(config: Config) -> bool:
        return config.atproto.enabled

    async def partitions(self) -> list[str]:
        return [default_partition(self.settings)]

    def new_source_stats(self) -> AtprotoStats:
        return AtprotoStats()

    def source(self, partition: str, *, read_cursor: ReadCursor, read_since: ReadSince | None = None,
               stats: Any) -> Callable[..., Awaitable[None]]:
        async def read_position() -> int | None:
            cursor = await read_cursor()
            return None if cursor is None else cursor.position

        return functools.partial(
            run_atproto_connection,
            settings=self.settings,
            partition=partition,
            read_cursor=read_position,
            read_since=read_since,
            stats=stats,
            backoff=self.context.backoff,
            breaker=self.breaker,
            rng=self.context.rng,
            dictionary=self.dictionary,
        )

    def predicate(self) -> Predicate | None:
        return None
