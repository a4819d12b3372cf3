"""Ethereum-family chains (JSON-RPC over WebSocket): one partition per configured chain, named by its chain id."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from weir.actors.ethereum import SOURCE, ChainStats, run_chain_connection
from weir.actors.filter import Predicate
from weir.codecs.ethereum_logs import EventAbi, LogDecoder
from weir.config import Config
from weir.networks.base import NetworkContext, ReadCursor, ReadSince
from weir.redact import redact_url


class EthereumNetwork:
    name: ClassVar[str] = SOURCE

    def __init__(self, config: Config, context: NetworkContext) -> None:
        self.settings = config.ethereum
        self.context = context
        self.decoder = LogDecoder(EventAbi.parse(text) for text in self.settings.abis)
        sup = config.supervision
        self.breakers = {
            str(chain.chain_id): sup.breaker(f"ethereum {chain.chain_id} {redact_url(chain.url)}")  # unique though two URLs redact alike
            for chain in self.settings.chains
        }

    @staticmethod
    def enabled(config: Config) -> bool:
        return config.ethereum.enabled

    async def partitions(self) -> list[str]:
        return [str(chain.chain_id) for chain in self.settings.chains]

    def new_source_stats(self) -> ChainStats:
        return ChainStats()

    def source(self, partition: str, *, read_cursor: ReadCursor, read_since: ReadSince | None = None,
               stats: Any) -> Callable[..., Awaitable[None]]:
        chain = next(c for c in self.settings.chains if str(c.chain_id) == partition)
        return functools.partial(
            run_chain_connection,
            settings=chain,
            decoder=self.decoder,
            read_cursor=read_cursor,
            stats=stats,
            backoff=self.context.backoff,
            breaker=self.breakers[partition],
            rng=self.context.rng,
        )

    def predicate(self) -> Predicate | None:
        return None  # filtering is server-side (eth_getLogs address / topics)
