"""A block tree for the chain-following tests: a canonical chain with reorgs, every block kept by hash."""

from __future__ import annotations

from collections import Counter

from weir.codecs.ethereum_chain import APPLY, Block, ChainFollower, NeedBlock, NeedLogs, NeedOlder, Step
from weir.codecs.ethereum_logs import Header, Log, Malformed


class World:
    """A chain with reorgs; every block ever made stays fetchable by hash (as a node keeps side blocks)."""

    def __init__(self) -> None:
        self.counter = 0
        self.by_hash: dict[str, Header] = {}
        self.logs: dict[str, tuple[Log, ...]] = {}
        self.bad: dict[str, tuple[Malformed, ...]] = {}  # the block's logs that do not parse (after the good ones)
        genesis = self._make(0, "0x" + "0" * 64, 1)
        self.canonical = [genesis]

    def _make(self, number: int, parent: str, n_logs: int, n_bad: int = 0) -> Header:
        self.counter += 1
        header = Header(number=number, hash="0x%064x" % self.counter, parent_hash=parent)
        self.by_hash[header.hash] = header
        self.logs[header.hash] = tuple(
            Log(block_number=number, block_hash=header.hash, log_index=i, tx_hash="0x" + "1" * 64,
                address="0x" + "2" * 40, topics=(), data="0x", raw={})
            for i in range(n_logs)
        )
        self.bad[header.hash] = tuple(
            Malformed(payload=b"%s:%d" % (header.hash.encode(), i), reason="malformed log: test")
            for i in range(n_logs, n_logs + n_bad)
        )
        return header

    def extend(self, n_logs: int, n_bad: int = 0) -> None:
        tip = self.canonical[-1]
        self.canonical.append(self._make(tip.number + 1, tip.hash, n_logs, n_bad))

    def reorg(self, depth: int, length: int, n_logs: int, n_bad: int = 0) -> None:
        depth = min(depth, len(self.canonical) - 1)
        del self.canonical[len(self.canonical) - depth :]
        for _ in range(length):
            self.extend(n_logs, n_bad)

    @property
    def head(self) -> Header:
        return self.canonical[-1]

    def ancestor(self, header: Header, number: int) -> Header:
        """``header``'s ancestor at height ``number`` (itself at its own height)."""
        while header.number > number:
            header = self.by_hash[header.parent_hash]
        return header

    def block(self, hash_: str) -> Block:
        return Block(header=self.by_hash[hash_], logs=self.logs[hash_], dead=self.bad[hash_])


def follow(follower: ChainFollower, world: World, head: Header) -> list[Step]:
    """Link the block ``head`` as the actor does, with the world as the node."""
    return link(follower, [world.block(head.hash)], world.block, world.by_hash.get)


def link(follower: ChainFollower, branch: list[Block], block_by_hash, header_by_hash) -> list[Step]:
    """The actor's walk back (``ChainReader.resolve``) with lookups instead of calls: each returns
    None for a block the node does not serve, and then :class:`Unavailable` is raised."""
    linking = follower.begin(branch)
    while (need := linking.need()) is not None:
        if isinstance(need, NeedBlock):
            linking.add_block(_served(block_by_hash(need.hash), need.hash))
        elif isinstance(need, NeedOlder):
            linking.add_older(_served(header_by_hash(need.hash), need.hash))
        else:
            assert isinstance(need, NeedLogs)
            linking.add_logs(need.hash, _served(block_by_hash(need.hash), need.hash).logs)  # the logs that parse
    return linking.finish()


class Unavailable(Exception):
    """The node does not serve a block weir asked for (the actor would reconnect)."""


def _served(value, hash_: str):
    if value is None:
        raise Unavailable(hash_)
    return value


def fresh(world: World, confirmations: int) -> tuple[ChainFollower, list[Step]]:
    follower = ChainFollower(confirmations=confirmations)
    return follower, follower.apply([world.block(world.canonical[0].hash)])


def net_logs(steps: list[Step]) -> Counter:
    held: Counter = Counter()
    for step in steps:
        for log in step.logs:
            if step.kind == APPLY:
                held[log.identity] += 1
                assert held[log.identity] == 1, f"log {log.identity} emitted twice"
            else:
                assert held[log.identity] == 1, f"retraction of {log.identity}, which is not held"
                held[log.identity] -= 1
    return +held
