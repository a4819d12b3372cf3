"""Ethereum connection actor: one chain's JSON-RPC WebSocket -> chunks of log / retract events.

Per connection: check ``eth_chainId``, subscribe to ``newHeads`` (heads buffer while we catch up),
check the cursor's block against the node's block at its height (a reorg while weir was down is
retracted at once; a node with no block there is behind, and waited for), backfill from the
cursor to the current head with ``eth_getLogs`` ranges (halved when the provider refuses a range
as too large, one block then pinned by hash) and batched ``eth_getBlockByNumber``, and only then
follow live heads. The decisions are pure: what a head means is :mod:`weir.codecs.ethereum_heads`,
the chain logic (linking, gaps, reorgs, confirmation depth) :class:`weir.codecs.ethereum_chain.ChainFollower`;
fetching what they ask for and turning steps into chunks is
:class:`weir.actors.ethereum_reader.ChainReader`. This module is the session around them.
Network faults reconnect with backoff; an idle subscription (no head for ``idle_blocks`` x
``block_time``) is checked with ``eth_blockNumber`` and reconnected when the node is ahead. One
Redis entry per log; see docs/ethereum.md.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

import trio
from trio_websocket import ConnectionClosed, HandshakeError

from weir.actors.ethereum_reader import (  # noqa: F401 - re-exported: the chain actor's vocabulary
    BATCH_CALLS,
    MALFORMED_RUN,
    PROVIDER_TEXT,
    SOURCE,
    UNAVAILABLE_ATTEMPTS,
    UNAVAILABLE_BLOCKS,
    BlockLost,
    BlockUnavailable,
    ChainReader,
    ChainStats,
    LogsRefused,
    MalformedHeader,
    NodeBehind,
    one_line,
)
from weir.actors.jsonrpc_ws import ConnectionLost, RequestTimeout, RpcConnection, open_rpc  # noqa: F401
from weir.actors.reconnect import reconnect_forever
from weir.actors.stopping import until_stopped
from weir.codecs.ethereum_chain import Block, ChainFollower, parse_token
from weir.codecs import ethereum_heads as heads
from weir.codecs.ethereum_logs import Header, LogDecoder
from weir.codecs.jsonrpc import JsonRpcError, ProtocolError, from_quantity, to_quantity
from weir.config import EthereumChainSettings
from weir.errors import Fatal
from weir.events import Chunk
from weir.sinks.redis_sink import Cursor
from weir.supervision import Backoff, CircuitBreaker

log = logging.getLogger("weir.actors.ethereum")

# A head more than this many blocks above the node's own eth_blockNumber is implausible (a forged
# number); a lagging backend behind one URL stays far closer than this.
HEAD_AHEAD_LIMIT = 1024


class IdleStream(Exception):
    """No head for longer than the idle timeout while the node's head moved on."""


class ChainMismatch(Fatal):
    """The endpoint serves another chain than the configured ``chain_id`` (configuration error)."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(is_transient(inner) for inner in exc.exceptions)
    if isinstance(exc, JsonRpcError):
        return exc.code in (-32000, -32005, -32603) or exc.too_large
    return isinstance(
        exc,
        (ConnectionLost, RequestTimeout, IdleStream, BlockUnavailable, ProtocolError, ConnectionClosed, HandshakeError,
         OSError, trio.TooSlowError, trio.BrokenResourceError),
    )


async def run_chain_connection(
    stopping: trio.Event,
    *,
    settings: EthereumChainSettings,
    decoder: LogDecoder,
    read_cursor: Callable[[], Awaitable[Cursor | None]],
    send: trio.MemorySendChannel[Chunk],
    stats: ChainStats,
    backoff: Backoff,
    breaker: CircuitBreaker | None = None,
    rng: random.Random | None = None,
    unavailable_blocks: float = UNAVAILABLE_BLOCKS,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Follow one chain into ``send`` until ``stopping`` is set (ready at once, like the Farcaster actor).

    A new incarnation resumes from the persisted cursor (sequence, "number:hash"); within one
    incarnation the follower's memory carries over reconnects.
    """
    rng = rng or random.Random()
    reader = ChainReader(settings=settings, decoder=decoder, stats=stats, unavailable_blocks=unavailable_blocks)
    stats.block_time, stats.confirmations = settings.block_time, settings.confirmations  # for the progress head
    task_status.started()

    def steps_done() -> int:
        return stats.emitted_blocks + stats.retracted_blocks

    async with until_stopped(stopping):
        cursor = await read_cursor()
        if cursor is not None:
            reader.handed = cursor

        async def session() -> None:
            done, ready = steps_done(), reader.ready_sessions
            began = trio.current_time()
            try:
                await _session(reader, send, stats, breaker)
            except Exception as exc:
                if steps_done() > done:
                    reader.unavailable = (None, 0, 0.0)  # the node served what weir needed: a new run
                    if breaker is not None and reader.ready_sessions == ready:
                        # Progress before the session was ready (a retraction at start): the breaker
                        # must still hear a success, or a half-open trial would never end.
                        breaker.record_success()
                    raise
                # Nothing done. Not progress either, so the backoff grows and the breaker counts it,
                # when the block weir needs was missing, or when the session failed fast even after
                # getting ready (e.g. its first backfill query times out every time: it would be
                # resent at the base delay for ever, the breaker kept closed).
                unavailable = isinstance(exc, BlockUnavailable)
                if unavailable or trio.current_time() - began < settings.idle_blocks * settings.block_time:
                    reader.ready_sessions = ready
                if unavailable:
                    reader.note_unavailable(exc)  # BlockLost after too many sessions without that block
                raise

        async def on_lost(exc: BaseException, delay: float, opened: bool) -> None:
            stats.last_error = f"{type(exc).__name__}: {exc}"
            await reader.flush_dead(send)
            log.warning("chain %s: connection to %s %s (%s); reconnecting in %.2fs", reader.partition, reader.shown_url,
                        "lost" if opened else "did not open", stats.last_error, delay,
                        extra={"event": "disconnect", "source": SOURCE, "partition": reader.partition, "url": reader.shown_url,
                               "opened": opened, "error": stats.last_error, "reconnect_in": round(delay, 3), "resume_from": _resume_point(reader),
                               "reconnects": stats.reconnects})

        await reconnect_forever(
            # a reply over the size limit teaches the reader to ask for less: progress too, or
            # the breaker would open while the range is halved down
            session, progress=lambda: steps_done() + reader.ready_sessions + reader.size_lessons, is_transient=is_transient,
            on_lost=on_lost, stats=stats, backoff=backoff, rng=rng, breaker=breaker,
            peer=f"chain {reader.partition}'s node {reader.shown_url}",
        )
    stats.connected = False


async def _session(reader: ChainReader, send: trio.MemorySendChannel[Chunk], stats: ChainStats,
                   breaker: CircuitBreaker | None) -> None:
    settings = reader.settings
    await reader.flush_unsent(send)  # what an interrupted hand-off left, before anything newer
    async with open_rpc(settings.url, connect_timeout=settings.connect_timeout, request_timeout=settings.request_timeout,
                        max_reply_bytes=settings.max_reply_bytes) as rpc:
        chain_id = from_quantity(await rpc.call("eth_chainId"), "eth_chainId")
        if chain_id != settings.chain_id:
            raise ChainMismatch(f"{reader.shown_url} serves chain {chain_id}, configured as chain {settings.chain_id}")
        await rpc.call("eth_subscribe", ["newHeads"])  # first: heads buffer while we catch up
        stats.connects += 1
        stats.connected = True
        stats.last_error = None
        log.info("chain %s: connected to %s", reader.partition, reader.shown_url,
                 extra={"event": "connect", "source": SOURCE, "partition": reader.partition, "url": reader.shown_url,
                        "resume_from": _resume_point(reader), "connects": stats.connects})
        if reader.follower is None:
            await _start(reader, rpc, reader.handed, send)
        # Only now is the node known to be of use: one that is behind the cursor, or that lost its
        # block, connects fine every time, and must still look failed to the backoff and the breaker.
        reader.ready_sessions += 1
        if breaker is not None:
            breaker.record_success()
        await _backfill(reader, rpc, from_quantity(await rpc.call("eth_blockNumber"), "eth_blockNumber"), send)
        idle = settings.idle_blocks * settings.block_time
        while True:
            obj = None
            with trio.move_on_after(idle):
                try:
                    obj = await rpc.heads.receive()
                except trio.EndOfChannel:
                    raise ConnectionLost("the subscription ended with the connection") from None
            if obj is None:
                node_head = from_quantity(await rpc.call("eth_blockNumber"), "eth_blockNumber")
                tip = reader.follower.tip  # type: ignore[union-attr]
                if tip is None or node_head > tip.number:
                    stats.idle_reconnects += 1
                    raise IdleStream(f"no head for {idle:g}s while the node is at block {node_head}")
                continue
            try:
                header = reader.parse_header(obj, "newHeads")
            except MalformedHeader:
                # Dead-lettered; the node's head is fetched again instead (this head, or a later one).
                await reader.flush_dead(send)
                latest = await reader.fetch_header(rpc, "eth_getBlockByNumber", ["latest", False], "eth_getBlockByNumber(latest)")
                if latest is None:
                    raise BlockUnavailable(f"chain {reader.partition}: the node has no latest block") from None
                header = latest
            stats.saw_head(header.number, float(header.timestamp))
            await _follow_head(reader, rpc, header, send)


async def _follow_head(reader: ChainReader, rpc: RpcConnection, header: Header, send: trio.MemorySendChannel[Chunk]) -> None:
    """Do what a live head means (:mod:`weir.codecs.ethereum_heads` decides; this asks the node)."""
    follower = reader.follower
    assert follower is not None
    stats = reader.stats
    for _ in range(2):  # a far head: backfill by ranges, then look again
        tip = follower.tip
        assert tip is not None
        verdict = heads.first_look(tip, follower.knows(header.hash), header, gap_fetch=reader.settings.gap_fetch)
        if verdict.kind == heads.FAR_AHEAD:
            node_head = from_quantity(await rpc.call("eth_blockNumber"), "eth_blockNumber")
            verdict = heads.judge_far(header, node_head, max_ahead=HEAD_AHEAD_LIMIT)
        if verdict.kind != heads.FAR_AHEAD:
            break
        await _backfill(reader, rpc, header.number - 1, send)
    else:
        verdict = heads.Verdict(kind=heads.ASK)  # still far after a backfill (the node moved on): ask
    if verdict.kind == heads.IMPLAUSIBLE:
        refused = reader.implausible_head(header, tip)
        await reader.flush_dead(send)
        if refused is not None:  # /readyz says why until the node sends a head weir can follow
            raise ProtocolError(f"node refused: {refused}; dropping the connection")
        return
    if verdict.kind == heads.ASK:
        at_height = await _block_at(reader, rpc, header.number)
        at_tip = None
        if verdict.ask_tip:
            at_tip = at_height if tip.number == header.number else await _block_at(reader, rpc, tip.number)
        verdict = heads.second_look(tip, header, at_height=at_height, at_tip=at_tip)
    # REPEAT: the node re-announced a block weir holds (or an ancestor of it); BEHIND: the node is
    # behind weir's tip; STALE: a head that waited in the buffer while weir learnt the newer chain
    # another way. Following any of them would retract and re-emit blocks for nothing.
    if verdict.kind == heads.REPEAT:
        stats.repeated_heads += 1
        return
    if verdict.kind == heads.BEHIND:
        stats.behind_heads += 1
        return
    if verdict.kind == heads.STALE:
        stats.stale_heads += 1
        return
    reader.followed_head()
    target = verdict.header
    assert target is not None
    logs, dead = await reader.logs_by_hash(rpc, target.hash)
    await reader.hand_on(await reader.resolve(rpc, [Block(header=target, logs=logs, dead=dead)]), send)


async def _block_at(reader: ChainReader, rpc: RpcConnection, number: int) -> Header | None:
    """The node's block at height ``number`` (None: it has none)."""
    return await reader.fetch_header(rpc, "eth_getBlockByNumber", [to_quantity(number), False],
                                     f"eth_getBlockByNumber({number})")


def _resume_point(reader: ChainReader) -> str | None:
    """Where the next session goes on from, for the logs: ``"number:hash"`` of the newest block
    known (or of the persisted cursor, before the first session); None: from ``start``."""
    tip = reader.follower.tip if reader.follower is not None else None
    return tip.token if tip is not None else reader.handed.token or None


async def _start(reader: ChainReader, rpc: RpcConnection, cursor: Cursor, send: trio.MemorySendChannel[Chunk]) -> None:
    """Set up the follower: from the cursor's block, or from ``start`` when the cursor has no block
    (none persisted yet: position 0, no token).

    The cursor's block is checked against the node's first (:func:`weir.codecs.ethereum_heads.judge_resume`
    decides; this asks): a reorg while weir was down is then retracted at once; a node that is behind
    is waited for (:class:`NodeBehind`), and retracts nothing.
    """
    settings = reader.settings
    if cursor.token:
        number, hash_ = parse_token(cursor.token)
        current = await _block_at(reader, rpc, number)
        verdict = heads.judge_resume(number, hash_, at_height=current, head=None, max_depth=settings.max_reorg_depth)
        if verdict.kind == heads.ASK:
            verdict = await _judge_without_block(reader, rpc, number, hash_)
        assert verdict.kind in (heads.RESUME, heads.REORG)
        tip = current if verdict.kind == heads.RESUME else await reader.header_by_hash(rpc, hash_)
        if tip is None or tip.number != number:
            raise ProtocolError(f"cursor block {hash_} is block {tip.number if tip else '?'} on the node, {number} in the cursor")
        reader.follower = ChainFollower.resume(seq=cursor.position, tip=tip, confirmations=settings.confirmations,
                                               max_depth=settings.max_reorg_depth)
        log.info("chain %s: resuming after block %d (%s), sequence %d", reader.partition, number, hash_, cursor.position)
        if verdict.kind == heads.RESUME:
            return
        other = verdict.header
        assert other is not None
        log.warning("chain %s: the cursor's block %d (%s) is not on the node's chain; walking back from block %d (%s)",
                    reader.partition, number, hash_, other.number, other.hash)
        logs, dead = await reader.logs_by_hash(rpc, other.hash)
        await reader.hand_on(await reader.resolve(rpc, [Block(header=other, logs=logs, dead=dead)]), send)
        return
    seq = cursor.position
    tag = "latest" if settings.start == "latest" else to_quantity(int(settings.start))
    first = await reader.fetch_header(rpc, "eth_getBlockByNumber", [tag, False], f"eth_getBlockByNumber({settings.start})")
    if first is None:
        raise BlockUnavailable(f"chain {reader.partition}: the node has no block {settings.start}")
    logs, dead = await reader.logs_by_hash(rpc, first.hash)
    reader.follower = ChainFollower(confirmations=settings.confirmations, max_depth=settings.max_reorg_depth, seq=seq)
    log.info("chain %s: no cursor, starting at block %d", reader.partition, first.number)
    steps = reader.follower.apply([Block(header=first, logs=logs, dead=dead)])
    await reader.hand_on(steps, send)


async def _judge_without_block(reader: ChainReader, rpc: RpcConnection, number: int, hash_: str) -> heads.Verdict:
    """The node has no block at the cursor's height ``number``: a REORG verdict (walk back from its
    head, on another, shorter chain), or raises :class:`NodeBehind` (wait for it) or
    :class:`BlockUnavailable` (missing history, counted towards :class:`BlockLost`)."""
    head = await reader.fetch_header(rpc, "eth_getBlockByNumber", ["latest", False], "eth_getBlockByNumber(latest)")
    if head is None:
        raise BlockUnavailable(f"chain {reader.partition}: the node has no latest block")
    behind = NodeBehind(f"chain {reader.partition}: the node has no block {number} (its head is block {head.number}), "
                        f"where weir resumes from block {hash_}; waiting for it to catch up", number, head.number)
    verdict = heads.judge_resume(number, hash_, at_height=None, head=head, max_depth=reader.settings.max_reorg_depth)
    if verdict.kind == heads.MISSING:
        raise BlockUnavailable(f"chain {reader.partition}: the node has no block {number} although its head is "
                               f"block {head.number}", hash_)
    if verdict.kind == heads.BEHIND:
        raise behind
    assert verdict.kind == heads.WALK_CURSOR
    try:
        block = await reader.header_by_hash(rpc, hash_)
        if block.number != number:
            raise ProtocolError(f"cursor block {hash_} is block {block.number} on the node, {number} in the cursor")
        for _ in range(number - head.number):
            block = await reader.header_by_hash(rpc, block.parent_hash)
    except BlockUnavailable:
        block = None
    if block is not None and block.number != head.number:
        raise ProtocolError(f"block {block.hash} is block {block.number} on the node, {head.number} by its children")
    verdict = heads.shorter_chain(block, head)
    if verdict.kind == heads.BEHIND:
        raise behind
    return verdict


async def _backfill(reader: ChainReader, rpc: RpcConnection, target: int, send: trio.MemorySendChannel[Chunk]) -> None:
    """Catch up to block ``target`` with ranges (after a reconnect, a restart or a large gap)."""
    follower = reader.follower
    assert follower is not None
    stats = reader.stats
    stats.saw_head(target)
    retries = 0
    start, fetched, splits = None, 0, stats.range_splits
    while (tip := follower.tip) is not None and tip.number < target:
        first = tip.number + 1
        last = min(target, first + reader.range_span() - 1)
        blocks = await reader.blocks_by_range(rpc, first, last)
        if blocks is None:
            await reader.flush_dead(send)
            retries += 1
            if retries > 20:
                raise BlockUnavailable(f"chain {reader.partition}: blocks {first}..{last} keep changing while fetched")
            target = from_quantity(await rpc.call("eth_blockNumber"), "eth_blockNumber")
            stats.saw_head(target)
            continue
        reader.range_read_whole()
        start = first if start is None else start
        fetched += len(blocks)
        stats.backfilled_blocks += len(blocks)
        await reader.hand_on(await reader.resolve(rpc, blocks), send)
    if fetched:
        end = tip.number if tip is not None else target
        log.info("chain %s: backfilled %d block(s) from block %d to %d by ranges (%d split(s))", reader.partition, fetched,
                 start, end, stats.range_splits - splits,
                 extra={"event": "backfill", "source": SOURCE, "partition": reader.partition, "how": "ranges",
                        "from_block": start, "to_block": end, "blocks": fetched, "range_splits": stats.range_splits - splits})
