"""Ethereum connection actor: one chain's JSON-RPC WebSocket -> chunks of log / retract events.

Per connection: check ``eth_chainId``, subscribe to ``newHeads`` (heads buffer while we catch up),
check the cursor's block against the node's block at its height (a reorg while weir was down is
retracted at once; a node with no block there is behind, and waited for), backfill from the
cursor to the current head with ``eth_getLogs`` ranges (halved when the provider refuses a range
as too large, one block then pinned by hash) and batched ``eth_getBlockByNumber``, and only then
follow live heads. The chain logic (linking, gaps, reorgs, confirmation depth) is
:class:`weir.codecs.ethereum_chain.ChainFollower`; this module only fetches what it asks for.
Network faults reconnect with backoff; an idle subscription (no head for ``idle_blocks`` x
``block_time``) is checked with ``eth_blockNumber`` and reconnected when the node is ahead. One
Redis entry per log; see docs/ethereum.md.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from weir.actors.jsonrpc_ws import ConnectionLost, ReplyTooLarge, RequestTimeout, RpcConnection, open_rpc
from weir.actors.reconnect import reconnect_forever
from weir.actors.stopping import until_stopped
from weir.codecs.ethereum_chain import RETRACT, Block, ChainFollower, NeedBlock, NeedLogs, NeedOlder, Step, parse_token
from weir.codecs import ethereum_heads as heads
from weir.codecs.ethereum_logs import Header, Log, LogDecoder, Malformed, parse_header, parse_log, raw_bytes, raw_log_bytes
from weir.codecs.jsonrpc import JsonRpcError, ProtocolError, from_quantity, to_quantity
from weir.config import EthereumChainSettings
from weir.errors import Fatal
from weir.events import Chunk, DeadLetter, Event
from weir.redact import redact_url
from weir.sinks.redis_sink import Cursor
from weir.supervision import Backoff, CircuitBreaker

log = logging.getLogger("weir.actors.ethereum")

SOURCE = "ethereum"
BATCH_CALLS = 100  # calls per JSON-RPC batch
CHUNK_EVENTS = 2000  # steps are grouped into chunks of about this many events
HEADER_ATTEMPTS = 3  # a header that does not parse is fetched again this many times in all
MALFORMED_RUN = 16  # this many malformed items in a row (logs or headers): the connection is dropped
# A head more than this many blocks above the node's own eth_blockNumber is implausible (a forged
# number); a lagging backend behind one URL stays far closer than this.
HEAD_AHEAD_LIMIT = 1024
# Sessions in a row that end because the node does not serve the same block: then it is lost, not
# late (a load-balanced provider may route the next connection to a backend that has it)...
UNAVAILABLE_ATTEMPTS = 5
# ...and only once it has been missing this many block times: sessions can fail in milliseconds,
# and a backend still importing the block needs time, not attempts.
UNAVAILABLE_BLOCKS = 10.0
PROVIDER_TEXT = 200  # a provider's error text quoted in one of our messages: one line, at most this long


class IdleStream(Exception):
    """No head for longer than the idle timeout while the node's head moved on."""


class ChainMismatch(Fatal):
    """The endpoint serves another chain than the configured ``chain_id`` (configuration error)."""


class BlockUnavailable(Exception):
    """The node does not know a block weir needs (by hash); retried after a reconnect.

    ``hash``: the block, when the request named one (counted by :meth:`ChainReader.note_unavailable`).
    """

    def __init__(self, message: str, hash_: str | None = None) -> None:
        super().__init__(message)
        self.hash = hash_


class NodeBehind(BlockUnavailable):
    """The node has no block at the cursor's height ``number`` (its head is ``node_head``): it is
    behind (a failover node, a backend still importing), not forgetful, so this never counts toward
    :class:`BlockLost`. Retried after a reconnect, with a backoff that grows."""

    def __init__(self, message: str, number: int, node_head: int) -> None:
        super().__init__(message)
        self.number = number
        self.node_head = node_head


class BlockLost(Fatal):
    """A block weir needs by hash (an orphan to retract, the cursor's block) was not served in
    UNAVAILABLE_ATTEMPTS sessions in a row, over UNAVAILABLE_BLOCKS block times at least, by a node
    that has passed its height: the node pruned it. Not retried (docs/ethereum.md, Limits)."""


class LogsRefused(Fatal):
    """The node refuses one block's logs as too large even pinned by ``blockHash``: no smaller
    request exists, so retrying cannot help (narrow the filter, or use a node without that cap)."""


class MalformedHeader(ProtocolError):
    """A header that does not parse (already dead-lettered): fetched again, else the connection is dropped."""


@attrs.define(eq=False)
class ChainStats:
    """Live counters of one chain's connection."""

    connected: bool = False
    connects: int = 0
    reconnects: int = 0
    received: int = 0  # logs received
    dead_letters: int = 0
    # Gaps filled block by block from the node. Not ``gaps``: that one (weir_gaps_total) counts data
    # lost upstream, and a chain's gap is fetched, never lost.
    filled_gaps: int = 0
    last_id: int | None = None  # the last sequence number emitted
    head: int | None = None  # the newest block number seen
    emitted_blocks: int = 0
    retracted_blocks: int = 0
    reorgs: int = 0
    deep_reorgs: int = 0
    backfilled_blocks: int = 0
    range_splits: int = 0
    idle_reconnects: int = 0
    stale_heads: int = 0  # heads skipped: no longer the node's block at their height
    repeated_heads: int = 0  # heads skipped: blocks weir holds (or their ancestors), announced again
    behind_heads: int = 0  # heads skipped: at or below weir's tip while the node has no block at the tip's height
    implausible_heads: int = 0  # heads dead-lettered: a number that does not follow its parent's, or far above the node's head
    refused: str | None = None  # why the node was last refused (implausible heads in a row); None once a head is followed
    last_error: str | None = None


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


def one_line(text: str, limit: int = PROVIDER_TEXT) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters: a provider's
    error may hold newlines or a whole HTML page, and our messages are one log line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _block_hash_of(item: Any) -> str | None:
    """The block hash a log object names, lower case, if it is a string (places a log that does not parse)."""
    value = item.get("blockHash") if isinstance(item, dict) else None
    return value.lower() if isinstance(value, str) else None


@attrs.define(eq=False)
class ChainReader:
    """Fetches what the follower asks for and turns its steps into chunks (one chain)."""

    settings: EthereumChainSettings
    decoder: LogDecoder
    stats: ChainStats
    follower: ChainFollower | None = None
    # Dead letters of headers (no position: a header that does not parse was never applied); they
    # go out with the next chunk, or alone (:meth:`flush_dead`).
    pending_dead: list[DeadLetter] = attrs.Factory(list)
    malformed_run: int = 0  # malformed items received in a row
    # The cursor of the last chunk handed on to the pipeline (dead-letter-only chunks carry it).
    handed: Cursor = attrs.Factory(lambda: Cursor(position=0, token=""))
    # Chunks of applied steps whose hand-off was interrupted: sent first by the next session.
    unsent: list[Chunk] = attrs.Factory(list)
    # The block the last sessions failed to get (BlockUnavailable), in how many sessions in a row,
    # and since when (trio clock).
    unavailable: tuple[str | None, int, float] = (None, 0, 0.0)
    # BlockLost also waits this many block times after the block first went missing.
    unavailable_blocks: float = UNAVAILABLE_BLOCKS
    # Sessions that got as far as following the chain (the cursor's block checked): progress, like
    # an emitted block, for the backoff and the breaker.
    ready_sessions: int = 0
    # Blocks per eth_getLogs range after a reply over max_reply_bytes (None: backfill_blocks); it
    # grows back, doubling, with each range read whole.
    range_cap: int | None = None
    # Blocks whose logs came in a reply over max_reply_bytes (hash -> the limit): dead-lettered.
    oversized: dict[str, int] = attrs.Factory(dict)
    size_lessons: int = 0  # replies over max_reply_bytes that changed what is asked for
    implausible_run: int = 0  # implausible heads in a row (reset by a head weir follows)

    @property
    def partition(self) -> str:
        return str(self.settings.chain_id)

    @property
    def shown_url(self) -> str:
        """The node's URL as messages and logs show it: without its credentials."""
        return redact_url(self.settings.url)

    def log_filter(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.settings.addresses:
            out["address"] = [a.lower() for a in self.settings.addresses]
        if self.settings.topics:
            out["topics"] = [None if position is None else [t.lower() for t in position] for position in self.settings.topics]
        return out

    # -- malformed data ----------------------------------------------------------------------------
    #
    # A log that does not parse is dead-lettered with its block's APPLY step (see ChainFollower); a
    # header that does not parse cannot be linked into the chain: it is dead-lettered at once (no
    # position) and fetched again. Only a run of MALFORMED_RUN bad items drops the connection.

    def _malformed(self) -> None:
        self.malformed_run += 1
        if self.malformed_run >= MALFORMED_RUN:
            self.malformed_run = 0
            raise ProtocolError(f"{MALFORMED_RUN} malformed items in a row from {self.shown_url}: dropping the connection")

    def parse_header(self, obj: Any, where: str) -> Header:
        """:func:`parse_header`; one that does not parse is dead-lettered and raises :class:`MalformedHeader`."""
        try:
            header = parse_header(obj, where)
        except ProtocolError as exc:
            reason = f"malformed header: {exc}"
            self.dead_header(raw_bytes(obj), reason)
            raise MalformedHeader(reason) from None
        self.malformed_run = 0
        return header

    def dead_header(self, payload: bytes, reason: str) -> None:
        """Dead-letter a header weir will not link (no position: it was never applied); a run of
        MALFORMED_RUN bad items drops the connection."""
        log.warning("chain %s: dead letter: %s", self.partition, reason,
                    extra={"event": "dead_letter", "source": SOURCE, "partition": self.partition})
        self.pending_dead.append(DeadLetter(source=SOURCE, partition=self.partition, payload=payload,
                                            reason=reason, received=trio.current_time()))
        self._malformed()

    async def fetch_header(self, rpc: RpcConnection, method: str, params: list[Any], where: str,
                           *, first: Any = None) -> Header | None:
        """A header by ``method`` (None: the node has no such block); one that does not parse is
        fetched again, up to HEADER_ATTEMPTS times in all. ``first``: an answer already received."""
        for attempt in range(HEADER_ATTEMPTS):
            obj = first if attempt == 0 and first is not None else await rpc.call(method, params)
            if obj is None:
                return None
            try:
                return self.parse_header(obj, where)
            except MalformedHeader:
                if attempt == HEADER_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def flush_dead(self, send: trio.MemorySendChannel[Chunk]) -> None:
        """Send what is unsent, then the pending dead letters alone (the cursor stays where the
        last chunk left it)."""
        await self.flush_unsent(send)
        if self.pending_dead:
            dead, self.pending_dead = self.pending_dead, []
            try:
                await send.send(Chunk(partition=self.partition, events=[], through=self.handed.position, dead=dead,
                                      token=self.handed.token))
            except BaseException:
                self.pending_dead = dead + self.pending_dead
                raise
            self.stats.dead_letters += len(dead)

    async def hand_on(self, steps: list[Step], send: trio.MemorySendChannel[Chunk]) -> None:
        """Send the chunks of ``steps`` down the pipeline, moving :attr:`handed` with each one.

        The follower applied the steps before they are sent. A send can be interrupted (the
        session fails, or we stop, while the pipeline is full): the chunks not handed on stay in
        :attr:`unsent` and go first, before anything newer, in the next session — the follower's
        memory already counts them as emitted, so skipping them would lose them.
        """
        self.unsent += self.chunks(steps, trio.current_time())
        await self.flush_unsent(send)

    async def flush_unsent(self, send: trio.MemorySendChannel[Chunk]) -> None:
        while self.unsent:
            chunk = self.unsent[0]
            await send.send(chunk)
            del self.unsent[0]
            self.handed = Cursor(position=chunk.through, token=chunk.token)

    def note_unavailable(self, exc: BlockUnavailable) -> None:
        """Count a session lost to ``exc`` (one that emitted nothing); raise :class:`BlockLost` when
        the same block was missing UNAVAILABLE_ATTEMPTS sessions in a row and for UNAVAILABLE_BLOCKS
        block times at least. A live head the node forgot is not asked for again (the next session
        backfills by number), so only a block weir cannot do without adds up. A node behind the
        block's height (:class:`NodeBehind`) is not counted, nor does it break the run."""
        if isinstance(exc, NodeBehind):
            return
        now = trio.current_time()
        last, count, since = self.unavailable
        if exc.hash is not None and exc.hash == last:
            count += 1
        else:
            count, since = 1, now
        self.unavailable = (exc.hash, count, since)
        missing_for = now - since
        if exc.hash is not None and count >= UNAVAILABLE_ATTEMPTS and missing_for >= self.lost_after:
            message = (f"chain {self.partition}: block {exc.hash} was not served by {self.shown_url} in "
                       f"{count} connections in a row over {missing_for:.1f}s ({one_line(str(exc), 2 * PROVIDER_TEXT)}); "
                       f"weir needs it to retract what it emitted from it (or to resume from it): use a node that "
                       f"keeps recent side blocks, see docs/ethereum.md (Limits)")
            log.error("%s", message, extra={"event": "block_lost", "source": SOURCE, "partition": self.partition,
                                            "block_hash": exc.hash, "attempts": count,
                                            "missing_for": round(missing_for, 3)})
            raise BlockLost(message) from exc

    @property
    def lost_after(self) -> float:
        """Seconds a block must have been missing before it is taken for lost."""
        return self.unavailable_blocks * self.settings.block_time

    # -- fetching ------------------------------------------------------------------------------------

    async def header_by_hash(self, rpc: RpcConnection, hash_: str) -> Header:
        header = await self.fetch_header(rpc, "eth_getBlockByHash", [hash_, False], f"eth_getBlockByHash({hash_})")
        if header is None:
            raise BlockUnavailable(f"chain {self.partition}: the node does not know block {hash_}", hash_)
        return header

    async def logs_by_hash(self, rpc: RpcConnection, hash_: str) -> tuple[tuple[Log, ...], tuple[Malformed, ...]]:
        """The logs of block ``hash_`` (by log index), and the ones that do not parse.

        A block whose logs came in a reply over ``max_reply_bytes`` (this session or an earlier
        one: the reply closed that connection) is not asked again: its logs are one dead letter.
        """
        if hash_ in self.oversized:
            return (), (self.oversized_letter(hash_),)
        try:
            items = await rpc.call("eth_getLogs", [{"blockHash": hash_, **self.log_filter()}])
        except ReplyTooLarge:
            self.oversized[hash_] = self.settings.max_reply_bytes
            self.size_lessons += 1
            raise
        except JsonRpcError as exc:
            if "unknown block" in exc.message.lower() or "not found" in exc.message.lower():
                raise BlockUnavailable(f"chain {self.partition}: no logs for block {hash_}: {one_line(exc.message)}",
                                       hash_) from None
            if exc.too_large:
                # One block is the smallest request there is: asking again would be refused again.
                raise LogsRefused(f"chain {self.partition}: {self.shown_url} refuses the logs of block {hash_} "
                                  f"even pinned by blockHash ({one_line(str(exc))}); narrow addresses/topics or use "
                                  f"a node without that cap") from None
            raise
        return self._pinned(items, hash_, f"eth_getLogs(blockHash={hash_})")

    def oversized_letter(self, hash_: str) -> Malformed:
        """The dead letter that stands for the logs of block ``hash_``, too large to read."""
        return Malformed(payload=b"", reason=f"logs too large: eth_getLogs(blockHash={hash_}) answered more than "
                                             f"max_reply_bytes={self.settings.max_reply_bytes} bytes; the block is "
                                             f"applied without them")

    async def logs_by_hashes(self, rpc: RpcConnection, hashes: list[str]) -> list[tuple[tuple[Log, ...], tuple[Malformed, ...]]]:
        """:meth:`logs_by_hash` for several blocks, in batches (one by one once a batch was too large)."""
        if self.range_cap == 1:
            return [await self.logs_by_hash(rpc, h) for h in hashes]
        out = []
        for start in range(0, len(hashes), BATCH_CALLS):
            part = hashes[start : start + BATCH_CALLS]
            try:
                results = await rpc.batch([("eth_getLogs", [{"blockHash": h, **self.log_filter()}]) for h in part])
            except ReplyTooLarge:
                self.range_cap = 1  # the next session asks block by block, and finds the large one
                self.size_lessons += 1
                raise
            out += [self._pinned(items, h, f"eth_getLogs(blockHash={h})") for h, items in zip(part, results)]
        return out

    def _pinned(self, items: Any, hash_: str, where: str) -> tuple[tuple[Log, ...], tuple[Malformed, ...]]:
        logs, bad = self._parse_logs(items, where)
        dead = [letter for _, letter in bad]
        kept = []
        for item in logs:
            if item.block_hash == hash_:
                kept.append(item)
            else:
                dead.append(Malformed(payload=raw_log_bytes(item), reason=f"malformed log: {where} returned a log of block {item.block_hash}"))
        return self.capped(hash_, tuple(sorted(kept, key=lambda item: item.log_index)), tuple(dead))

    def capped(self, hash_: str, logs: tuple[Log, ...], dead: tuple[Malformed, ...]) -> tuple[tuple[Log, ...], tuple[Malformed, ...]]:
        """A block's logs within ``max_logs_per_block``; above it, none, and one dead letter saying so
        (a node that answers a block with an absurd number of logs must not flood the stream)."""
        limit = self.settings.max_logs_per_block
        if len(logs) <= limit:
            return logs, dead
        reason = f"too many logs: block {hash_} has {len(logs)} matching logs, above max_logs_per_block={limit}; " \
                 f"the block is applied without them"
        return (), (*dead, Malformed(payload=b"", reason=reason))

    def _parse_logs(self, items: Any, where: str) -> tuple[list[Log], list[tuple[Any, Malformed]]]:
        """The items that parse, and the ones that do not (each with its dead-letter form)."""
        if not isinstance(items, list):
            raise ProtocolError(f"{where}: expected a list of logs, got {type(items).__name__}")
        self.stats.received += len(items)
        logs: list[Log] = []
        bad: list[tuple[Any, Malformed]] = []
        for i, item in enumerate(items):
            try:
                logs.append(parse_log(item, f"{where}[{i}]"))
            except ProtocolError as exc:
                bad.append((item, Malformed(payload=raw_bytes(item), reason=f"malformed log: {exc}")))
                self._malformed()
            else:
                self.malformed_run = 0
        return logs, bad

    async def logs_by_range(self, rpc: RpcConnection, headers: list[Header]) -> tuple[list[Log], list[tuple[str | None, Malformed]]]:
        """eth_getLogs over the blocks of ``headers`` (consecutive), halving the range whenever the
        provider refuses its size; a single block refused is asked for pinned by its hash (a
        provider caps a range's results, not one block's). Returns the logs, and the ones that do
        not parse each with the block hash it names (None: unreadable)."""
        first, last = headers[0].number, headers[-1].number
        if first == last and headers[0].hash in self.oversized:
            return [], [(headers[0].hash, self.oversized_letter(headers[0].hash))]
        try:
            items = await rpc.call("eth_getLogs", [{"fromBlock": to_quantity(first), "toBlock": to_quantity(last), **self.log_filter()}])
        except ReplyTooLarge:
            # The connection is gone with the reply: the next session asks for half the range, down
            # to one block, which is then dead-lettered instead of asked for again.
            if first == last:
                self.oversized[headers[0].hash] = self.settings.max_reply_bytes
            else:
                self.range_cap = max(1, (last - first + 1) // 2)
                self.stats.range_splits += 1
            self.size_lessons += 1
            raise
        except JsonRpcError as exc:
            if not exc.too_large:
                raise
            if first == last:
                logs, dead = await self.logs_by_hash(rpc, headers[0].hash)
                return list(logs), [(headers[0].hash, letter) for letter in dead]
            self.stats.range_splits += 1
            middle = (len(headers) + 1) // 2
            logs_a, bad_a = await self.logs_by_range(rpc, headers[:middle])
            logs_b, bad_b = await self.logs_by_range(rpc, headers[middle:])
            return logs_a + logs_b, bad_a + bad_b
        logs, bad = self._parse_logs(items, f"eth_getLogs({first}..{last})")
        return logs, [(_block_hash_of(item), letter) for item, letter in bad]

    async def blocks_by_range(self, rpc: RpcConnection, first: int, last: int) -> list[Block] | None:
        """Headers and logs of [first, last]; None when they disagree (a reorg while fetching)."""
        headers: list[Header] = []
        for start in range(first, last + 1, BATCH_CALLS):
            numbers = range(start, min(last, start + BATCH_CALLS - 1) + 1)
            results = await rpc.batch([("eth_getBlockByNumber", [to_quantity(n), False]) for n in numbers])
            for n, obj in zip(numbers, results):
                header = None
                if obj is not None:
                    try:
                        header = await self.fetch_header(rpc, "eth_getBlockByNumber", [to_quantity(n), False],
                                                         f"eth_getBlockByNumber({n})", first=obj)
                    except MalformedHeader:
                        return None  # dead-lettered; the range is fetched again
                if header is None or header.number != n:
                    return None  # the head went back (a reorg to a shorter chain): retry
                headers.append(header)
        for older, newer in zip(headers, headers[1:]):
            if newer.parent_hash != older.hash:
                return None
        index = {h.hash: i for i, h in enumerate(headers)}
        logs, bad = await self.logs_by_range(rpc, headers)
        dead: list[list[Malformed]] = [[] for _ in headers]
        for block_hash, letter in bad:
            at = index.get(block_hash) if block_hash is not None else None
            if at is None:
                # A log that does not parse nor say which of these blocks it belongs to: fetch the
                # range's logs again block by block, pinned by hash, where every log has its block.
                pinned = await self.logs_by_hashes(rpc, [h.hash for h in headers])
                return [Block(header=h, logs=logs_, dead=dead_) for h, (logs_, dead_) in zip(headers, pinned)]
            dead[at].append(letter)
        by_number: dict[int, list[Log]] = {h.number: [] for h in headers}
        for item in logs:
            if item.block_number not in by_number or item.block_hash != headers[item.block_number - first].hash:
                return None
            by_number[item.block_number].append(item)
        blocks = []
        for h, d in zip(headers, dead):
            logs_, dead_ = self.capped(h.hash, tuple(sorted(by_number[h.number], key=lambda x: x.log_index)), tuple(d))
            blocks.append(Block(header=h, logs=logs_, dead=dead_))
        return blocks

    async def resolve(self, rpc: RpcConnection, branch: list[Block]) -> list[Step]:
        """Walk back until ``branch`` links to the window, then apply it (:class:`Linking` decides;
        this only fetches what it asks for)."""
        follower = self.follower
        assert follower is not None
        linking = follower.begin(branch)
        while (need := linking.need()) is not None:
            if isinstance(need, NeedBlock):
                header = await self.header_by_hash(rpc, need.hash)
                logs, dead = await self.logs_by_hash(rpc, need.hash)
                linking.add_block(Block(header=header, logs=logs, dead=dead))
            elif isinstance(need, NeedOlder):
                linking.add_older(await self.header_by_hash(rpc, need.hash))
            else:
                assert isinstance(need, NeedLogs)
                # Logs that do not parse were dead-lettered (not emitted) when the block was applied.
                linking.add_logs(need.hash, (await self.logs_by_hash(rpc, need.hash))[0])
        if linking.new_head is None:
            return []  # every block of it was known: a re-announcement
        branch, fetched = linking.branch, linking.fetched
        reorgs_before, old_tip = follower.reorgs, follower.tip
        steps = linking.finish()
        ancestor = branch[0].header.number - 1
        fields = {"source": SOURCE, "partition": self.partition, "ancestor": ancestor, "head": branch[-1].header.number}
        if follower.reorgs > reorgs_before:
            assert old_tip is not None
            retracted = [s for s in steps if s.kind == RETRACT]
            deep = any(s.deep for s in retracted)
            self.stats.reorgs += 1
            # depth: blocks replaced (pending ones included); retracted: the emitted ones among them
            fields.update(event="reorg", depth=old_tip.number - ancestor, retracted=len(retracted), deep=deep,
                          confirmations=self.settings.confirmations)
            if deep:
                self.stats.deep_reorgs += 1
                log.error("chain %s: reorg of %d block(s) above block %d, deeper than %d confirmations: "
                          "retracting %d emitted block(s)", self.partition, fields["depth"], ancestor,
                          self.settings.confirmations, len(retracted), extra=fields)
            else:
                log.info("chain %s: reorg of %d block(s) above block %d, %d emitted block(s) retracted",
                         self.partition, fields["depth"], ancestor, len(retracted), extra=fields)
        elif fetched:
            self.stats.filled_gaps += 1
            fields.update(event="backfill", how="by_hash", blocks=fetched, from_block=ancestor + 1)
            log.info("chain %s: filled a gap of %d block(s) from block %d, by hash", self.partition, fetched, ancestor + 1,
                     extra=fields)
        return steps

    def chunks(self, steps: list[Step], received: float) -> list[Chunk]:
        """Group steps into chunks (a step, i.e. a stream position, is never split)."""
        out: list[Chunk] = []
        events: list[Event] = []
        dead, self.pending_dead = self.pending_dead, []
        for step in steps:
            events += self._events(step, received)
            if step.kind == RETRACT:
                self.stats.retracted_blocks += 1
            else:
                self.stats.emitted_blocks += 1
            for letter in step.dead:
                reason = f"block {step.header.number} ({step.header.hash}): {letter.reason}"
                log.warning("chain %s: dead letter at %d: %s", self.partition, step.seq, reason,
                            extra={"event": "dead_letter", "source": SOURCE, "partition": self.partition, "position": step.seq})
                dead.append(DeadLetter(source=SOURCE, partition=self.partition, payload=letter.payload, reason=reason,
                                       position=step.seq, received=received))
            # A retraction closes its chunk: through a deep reorg the cursor moves block by block.
            if len(events) >= CHUNK_EVENTS or step.kind == RETRACT or step is steps[-1]:
                self.stats.dead_letters += len(dead)
                out.append(Chunk(partition=self.partition, events=events, through=step.seq, token=step.token, dead=dead))
                events, dead = [], []
        if steps:
            self.stats.last_id = steps[-1].seq
        self.pending_dead = dead  # no steps: header dead letters wait (or are flushed)
        return out

    def _events(self, step: Step, received: float) -> list[Event]:
        chain_id = self.settings.chain_id
        header = step.header
        out = []
        for sub, item in enumerate(step.logs):
            fields: dict[str, Any] = {
                "chain": chain_id,
                "block": item.block_number,
                "block_hash": item.block_hash,
                "log_index": item.log_index,
                "tx": item.tx_hash,
                "address": item.address,
            }
            if item.topics:
                fields["topic0"] = item.topics[0]
            decoded = self.decoder.decode(item)
            if decoded is not None:
                fields["event"] = decoded.event
                if decoded.standard:
                    fields["standard"] = decoded.standard
                fields["decoded"] = decoded.to_json()
            out.append(
                Event(
                    source=SOURCE,
                    partition=self.partition,
                    position=step.seq,
                    sub=sub,
                    kind=step.kind,
                    key=f"{chain_id}:{item.block_hash}:{item.log_index}".encode(),
                    payload=raw_log_bytes(item),
                    timestamp=float(header.timestamp),
                    received=received,
                    fields=fields,
                )
            )
        return out


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
            stats.head = max(stats.head or 0, header.number)
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
        # Never linked: a forged number would become the cursor, or send the backfill after blocks
        # that do not exist. Dead-lettered; MALFORMED_RUN of them in a row refuse the node: the
        # connection is dropped and /readyz says why until the node sends a head weir can follow.
        stats.implausible_heads += 1
        reader.implausible_run += 1
        payload = json.dumps({"number": hex(header.number), "hash": header.hash, "parentHash": header.parent_hash}).encode()
        reason = (f"implausible head: block {header.number} ({header.hash}) after weir's tip {tip.number} ({tip.hash}): "
                  f"its number does not follow its parent's, or is far above the node's own head")
        reader.pending_dead.append(DeadLetter(source=SOURCE, partition=reader.partition, payload=payload, reason=reason,
                                              received=trio.current_time()))
        log.warning("chain %s: dead letter: %s", reader.partition, reason,
                    extra={"event": "dead_letter", "source": SOURCE, "partition": reader.partition})
        await reader.flush_dead(send)
        if reader.implausible_run >= MALFORMED_RUN:
            reader.implausible_run = 0
            stats.refused = f"{MALFORMED_RUN} implausible heads in a row from {reader.shown_url}"
            log.error("chain %s: node refused: %s", reader.partition, stats.refused,
                      extra={"event": "node_refused", "source": SOURCE, "partition": reader.partition,
                             "reason": stats.refused})
            raise ProtocolError(f"node refused: {stats.refused}; dropping the connection")
        return
    if verdict.kind == heads.ASK:
        at_height = await _block_at(reader, rpc, header.number)
        at_tip = at_height if tip.number == header.number else (await _block_at(reader, rpc, tip.number) if verdict.ask_tip else None)
        verdict = heads.second_look(tip, header, at_height=at_height, at_tip=at_tip)
    if verdict.kind in (heads.REPEAT, heads.BEHIND, heads.STALE):
        # REPEAT: the node re-announced a block weir holds (or an ancestor of it); BEHIND: the node
        # is behind weir's tip; STALE: a head that waited in the buffer while weir learnt the newer
        # chain another way. Following any of them would retract and re-emit blocks for nothing.
        counter = {heads.REPEAT: "repeated_heads", heads.BEHIND: "behind_heads"}.get(verdict.kind, "stale_heads")
        setattr(stats, counter, getattr(stats, counter) + 1)
        return
    reader.implausible_run = 0  # a head weir follows: the node is believed again
    stats.refused = None
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
    settings = reader.settings
    stats = reader.stats
    retries = 0
    start, fetched, splits = None, 0, stats.range_splits
    while (tip := follower.tip) is not None and tip.number < target:
        first = tip.number + 1
        span = settings.backfill_blocks if reader.range_cap is None else min(settings.backfill_blocks, reader.range_cap)
        last = min(target, first + span - 1)
        blocks = await reader.blocks_by_range(rpc, first, last)
        if blocks is not None and reader.range_cap is not None:  # a range read whole: ask for more again
            reader.range_cap = None if span * 2 >= settings.backfill_blocks else span * 2
        if blocks is None:
            await reader.flush_dead(send)
            retries += 1
            if retries > 20:
                raise BlockUnavailable(f"chain {reader.partition}: blocks {first}..{last} keep changing while fetched")
            target = from_quantity(await rpc.call("eth_blockNumber"), "eth_blockNumber")
            continue
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
