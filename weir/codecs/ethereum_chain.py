"""Chain following with reorgs and confirmation depth, as a sans-IO state machine.

The follower keeps a window of recent blocks (number, hash, parent hash, logs): a prefix of
*emitted* blocks (their logs went down the pipeline; the newest is the cursor) and a suffix of
*pending* blocks (seen, not yet ``confirmations`` deep). The driver (the actor, or a test) hands it
a *branch*: consecutive blocks ending at a new head, through a :class:`Linking`
(:meth:`ChainFollower.begin`): :meth:`Linking.need` says what it still needs before the branch
connects to the window; the driver fetches that, hands it over and asks again; then
:meth:`Linking.finish` returns the :class:`Step` values to emit:

- the branch's first parent is the tip: the plain case (a head, or a gap the driver filled);
- it is an older block of the window: a reorg — the blocks above it are orphaned: emitted ones are
  retracted (one ``RETRACT`` step per block, newest first), pending ones are forgotten;
- it is not in the window: the driver walks back, fetching the branch's parent by hash
  (``NeedBlock``), or, once the branch reaches below the window, the window's own older blocks
  (``NeedOlder``), until both meet at the common ancestor. A retracted block whose logs are not in
  memory (after a restart, only the cursor block is known) is asked for with ``NeedLogs``.

Blocks of the branch that the window already holds are dropped before every question, not only
the first: after a restart the window holds the cursor's block alone, so a re-announced older
head is learnt to be an ancestor only once the walk back has fetched it. It then changes nothing.
What a head means before any of this (a repeat, lag, a stale head, a gap for ranges) is decided by
:mod:`weir.codecs.ethereum_heads`.

Every step has its own **sequence number**, one more than the last: the Redis stream position.
The sequence only increases, whatever the chain does, so stream ids stay strictly increasing and
the persist script's "skip at or below the cursor" rule stays exact. The cursor stored with a step
is ``(sequence, "number:hash" of the last emitted block after the step)``; :meth:`resume` restarts
from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from weir.codecs.ethereum_logs import Header, Log, Malformed
from weir.errors import Fatal

APPLY = "log"
RETRACT = "retract"


class ReorgTooDeep(Fatal):
    """The common ancestor is deeper than ``max_depth`` blocks below the tip: weir cannot retract
    exactly; an operator must decide (the message says from which block)."""


@attrs.frozen(kw_only=True)
class Block:
    """A header with its logs (``logs`` None: not fetched; only for window blocks after a restart).

    ``dead``: the block's logs that did not parse. They travel with the block and come out with its
    ``APPLY`` step (for the dead-letter stream, at that step's position), never in ``logs``: a
    later retraction of the block names exactly the logs that were emitted.
    """

    header: Header
    logs: tuple[Log, ...] | None
    dead: tuple[Malformed, ...] = ()


@attrs.frozen
class NeedBlock:
    """Fetch the block ``hash`` (header and logs) and put it in front of the branch."""

    hash: str


@attrs.frozen
class NeedOlder:
    """Fetch the header of ``hash`` (the parent of the window's oldest block): :meth:`ChainFollower.add_older`."""

    hash: str


@attrs.frozen
class NeedLogs:
    """Fetch the logs of ``hash`` (an emitted block about to be retracted): :meth:`ChainFollower.add_logs`."""

    hash: str


Need = NeedBlock | NeedOlder | NeedLogs


@attrs.frozen(kw_only=True)
class Step:
    """Something to emit: the logs of ``header`` applied, or retracted.

    Attributes:
        seq: the stream position (strictly increasing per chain).
        kind: ``APPLY`` or ``RETRACT``.
        header: the block applied or retracted.
        logs: its logs (for a retraction, the logs that were emitted for it).
        token: ``"number:hash"`` of the last emitted block once this step is done (cursor token).
        deep: a retraction below the confirmation depth (only when ``confirmations`` > 0).
        dead: for ``APPLY``, the block's logs that did not parse (dead letters at ``seq``).
    """

    seq: int
    kind: str
    header: Header
    logs: tuple[Log, ...]
    token: str
    deep: bool = False
    dead: tuple[Malformed, ...] = ()


@attrs.define
class _Node:
    header: Header
    logs: tuple[Log, ...] | None
    emitted: bool
    dead: tuple[Malformed, ...] = ()


def parse_token(token: str) -> tuple[int, str]:
    """Split a cursor token ``"number:hash"``; raises ValueError naming the token."""
    number, sep, hash_ = token.partition(":")
    if not sep or not number.isdigit() or not hash_.startswith("0x") or len(hash_) != 66:
        raise ValueError(f"cursor token {token!r} is not 'number:0xhash'")
    return int(number), hash_.lower()


@attrs.define(eq=False)
class ChainFollower:
    """Follows one chain's head; see the module docstring.

    Args:
        confirmations: a block's logs are emitted when ``confirmations`` blocks are on top of it
            (0: at once).
        max_depth: how many emitted blocks are kept (and how deep a reorg can be retracted).
        seq: the last sequence number used (the cursor position when resuming).
    """

    confirmations: int = 0
    max_depth: int = 64
    seq: int = 0
    _chain: list[_Node] = attrs.Factory(list)
    _index: dict[str, int] = attrs.Factory(dict)  # hash -> position in _chain (rebuilt on change)
    head_number: int = -1
    deep_reorgs: int = 0
    reorgs: int = 0

    @classmethod
    def resume(cls, *, seq: int, tip: Header, confirmations: int = 0, max_depth: int = 64) -> ChainFollower:
        """Restart from a cursor: ``tip`` is the block of the cursor token (its logs are not known)."""
        follower = cls(confirmations=confirmations, max_depth=max_depth, seq=seq)
        follower._chain = [_Node(tip, None, True)]
        follower._reindex()
        follower.head_number = tip.number
        return follower

    # -- queries ---------------------------------------------------------------------------------

    @property
    def tip(self) -> Header | None:
        """The newest block known (emitted or pending)."""
        return self._chain[-1].header if self._chain else None

    @property
    def emitted_tip(self) -> Header | None:
        """The newest emitted block: the cursor's block."""
        for node in reversed(self._chain):
            if node.emitted:
                return node.header
        return None

    def knows(self, hash_: str) -> bool:
        return hash_ in self._index

    def window(self) -> list[Header]:
        return [node.header for node in self._chain]

    # -- linking ---------------------------------------------------------------------------------

    def begin(self, branch: Sequence[Block]) -> Linking:
        """Start linking ``branch`` (consecutive blocks, oldest first) to the window."""
        _check_branch(branch)
        return Linking(follower=self, branch=list(branch))

    def trim_known(self, branch: Sequence[Block]) -> list[Block]:
        """Drop the branch's leading blocks that are already in the window (replayed heads)."""
        start = 0
        while start < len(branch) and branch[start].header.hash in self._index:
            start += 1
        return list(branch[start:])

    def link(self, branch: Sequence[Block]) -> Need | None:
        """What is still needed before ``branch`` (consecutive, oldest first) can be applied.

        Raises:
            ReorgTooDeep: the walk back passed ``max_depth`` blocks below the tip.
            ValueError: the branch is empty or its blocks do not link.
        """
        _check_branch(branch)
        if not self._chain:
            return None
        first = branch[0].header
        at = self._index.get(first.parent_hash)
        if at is not None:
            parent = self._chain[at].header
            if parent.number != first.number - 1:
                raise ValueError(f"block {first.number} ({first.hash}) names block {parent.number} ({parent.hash}) "
                                 f"as its parent: a number that does not follow its parent's")
            for node in self._chain[at + 1 :]:
                if node.emitted and node.logs is None:
                    return NeedLogs(node.header.hash)
            return None
        lowest = self._chain[0].header
        if first.number - 1 > lowest.number:
            return NeedBlock(first.parent_hash)
        tip = self._chain[-1].header
        if tip.number - lowest.number >= self.max_depth or lowest.number == 0:
            raise ReorgTooDeep(
                f"no common ancestor within {self.max_depth} blocks below block {tip.number} ({tip.hash}); "
                f"the new branch starts at block {first.number} ({first.hash})"
            )
        return NeedOlder(lowest.parent_hash)

    def add_older(self, header: Header) -> None:
        """The parent of the window's oldest block (answer to :class:`NeedOlder`)."""
        lowest = self._chain[0].header
        if header.hash != lowest.parent_hash or header.number != lowest.number - 1:
            raise ValueError(f"block {header.number} {header.hash} is not the parent of block {lowest.number} {lowest.hash}")
        self._chain.insert(0, _Node(header, None, True))
        self._reindex()

    def add_logs(self, hash_: str, logs: Sequence[Log]) -> None:
        """The logs of window block ``hash_`` (answer to :class:`NeedLogs`).

        Only the logs that parse: the ones that did not were dead-lettered when the block was
        applied (in an earlier incarnation), not emitted, so they are not retracted either.
        """
        self._chain[self._index[hash_]].logs = tuple(logs)

    def apply(self, branch: Sequence[Block]) -> list[Step]:
        """Apply a branch that :meth:`link` accepted; returns the steps to emit, in order."""
        if self.link(branch) is not None:
            raise ValueError("the branch does not link to the window yet (call link() until it returns None)")
        steps: list[Step] = []
        if self._chain:
            at = self._index[branch[0].header.parent_hash]
            orphaned = self._chain[at + 1 :]
            if orphaned:
                self.reorgs += 1
            del self._chain[at + 1 :]
            for node in reversed(orphaned):
                if not node.emitted:
                    continue
                assert node.logs is not None
                deep = self.confirmations > 0
                self.deep_reorgs += deep
                self.seq += 1
                # The cursor after this step is the retracted block's parent: a restart between two
                # retractions then still knows the next orphaned block (it is that parent).
                parent = f"{node.header.number - 1}:{node.header.parent_hash}"
                steps.append(Step(seq=self.seq, kind=RETRACT, header=node.header, logs=node.logs, token=parent, deep=deep))
        for block in branch:
            if block.logs is None:
                raise ValueError(f"branch block {block.header.number} {block.header.hash} has no logs")
            self._chain.append(_Node(block.header, block.logs, False, block.dead))
        self.head_number = branch[-1].header.number
        for node in self._chain:
            if node.emitted:
                continue
            if node.header.number > self.head_number - self.confirmations:
                break
            node.emitted = True
            self.seq += 1
            assert node.logs is not None
            steps.append(Step(seq=self.seq, kind=APPLY, header=node.header, logs=node.logs, token=node.header.token, dead=node.dead))
            node.dead = ()  # emitted once; a later retraction does not take dead letters back
        emitted = sum(node.emitted for node in self._chain)
        if emitted > self.max_depth + 1:
            del self._chain[: emitted - self.max_depth - 1]
        self._reindex()
        return steps

    def _reindex(self) -> None:
        self._index = {node.header.hash: i for i, node in enumerate(self._chain)}


def _check_branch(branch: Sequence[Block]) -> None:
    if not branch:
        raise ValueError("empty branch")
    for older, newer in zip(branch, branch[1:]):
        if newer.header.parent_hash != older.header.hash or newer.header.number != older.header.number + 1:
            raise ValueError(
                f"branch blocks do not link: {newer.header.number} {newer.header.hash} after {older.header.number} {older.header.hash}"
            )


@attrs.define(eq=False)
class Linking:
    """One branch on its way into the window: what to fetch, then the steps (sans-IO).

    The driver loops ``while (need := linking.need()) is not None``, answers each need with
    :meth:`add_block`, :meth:`add_older` or :meth:`add_logs`, then calls :meth:`finish`. Giving up
    half way (the node could not answer) is safe: the answers only ever add blocks the window's
    chain really has below it, or logs of blocks it holds.

    Attributes:
        fetched: blocks put in front of the branch by hash (a gap filled, or a reorg's new branch).
    """

    follower: ChainFollower
    branch: list[Block]
    fetched: int = 0

    def need(self) -> Need | None:
        """What is still needed (None: :meth:`finish` can be called). Known blocks are dropped
        first, every time (see the module docstring).

        Raises:
            ReorgTooDeep: the walk back passed ``max_depth`` blocks below the tip.
        """
        self.branch = self.follower.trim_known(self.branch)
        if not self.branch:
            return None  # nothing new: a re-announcement of blocks the window holds
        return self.follower.link(self.branch)

    def add_block(self, block: Block) -> None:
        """Answer to :class:`NeedBlock`: the parent of the branch's first block."""
        first = self.branch[0].header
        if block.header.hash != first.parent_hash or block.header.number != first.number - 1:
            raise ValueError(f"block {block.header.number} {block.header.hash} is not the parent of block {first.number} {first.hash}")
        self.branch.insert(0, block)
        self.fetched += 1

    def add_older(self, header: Header) -> None:
        """Answer to :class:`NeedOlder`."""
        self.follower.add_older(header)

    def add_logs(self, hash_: str, logs: Sequence[Log]) -> None:
        """Answer to :class:`NeedLogs`."""
        self.follower.add_logs(hash_, logs)

    @property
    def new_head(self) -> Header | None:
        """The branch's last block, if anything of it is new."""
        return self.branch[-1].header if self.branch else None

    def finish(self) -> list[Step]:
        """Apply the branch (:meth:`need` returned None); the steps to emit, in order.

        Raises:
            ValueError: the branch does not link to the window yet (from :meth:`ChainFollower.apply`).
        """
        self.branch = self.follower.trim_known(self.branch)
        return self.follower.apply(self.branch) if self.branch else []
