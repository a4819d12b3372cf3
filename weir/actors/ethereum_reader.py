"""Fetching one chain from a JSON-RPC node for the Ethereum actor: headers and logs by number, by
range and pinned by hash, with the node's refusals, malformed items and size limits handled, and the
follower's steps turned into chunks of log / retract events. The chain decisions are
:mod:`weir.codecs.ethereum_chain` and :mod:`weir.codecs.ethereum_heads`; the session (connect,
start, backfill, live heads) is :mod:`weir.actors.ethereum`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

import attrs
import trio

from weir.actors.jsonrpc_ws import ReplyTooLarge, RpcConnection
from weir.codecs.ethereum_chain import RETRACT, Block, ChainFollower, NeedBlock, NeedLogs, NeedOlder, Step
from weir.codecs.ethereum_logs import Header, Log, LogDecoder, Malformed, parse_header, parse_log, raw_bytes, raw_log_bytes
from weir.codecs.jsonrpc import JsonRpcError, ProtocolError, to_quantity
from weir.config import EthereumChainSettings
from weir.errors import Fatal
from weir.events import Chunk, DeadLetter, Event
from weir.observability.progress import ProgressSample
from weir.redact import redact_url
from weir.sinks.redis_sink import Cursor

log = logging.getLogger("weir.actors.ethereum")

SOURCE = "ethereum"
BATCH_CALLS = 100  # calls per JSON-RPC batch
CHUNK_EVENTS = 2000  # steps are grouped into chunks of about this many events
HEADER_ATTEMPTS = 3  # a header that does not parse is fetched again this many times in all
MALFORMED_RUN = 16  # this many malformed items in a row (logs or headers): the connection is dropped
# Sessions in a row that end because the node does not serve the same block: then it is lost, not
# late (a load-balanced provider may route the next connection to a backend that has it)...
UNAVAILABLE_ATTEMPTS = 5
# ...and only once it has been missing this many block times: sessions can fail in milliseconds,
# and a backend still importing the block needs time, not attempts.
UNAVAILABLE_BLOCKS = 10.0
PROVIDER_TEXT = 200  # a provider's error text quoted in one of our messages: one line, at most this long


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
    head_time: float | None = None  # its timestamp (unix seconds), when it came as a header
    tip: int | None = None  # the block weir's position is at (the last emitted; below a retracted one)
    tip_time: float | None = None  # its timestamp
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

    progress_unit: ClassVar[str] = "block"  # what the progress positions count

    block_time: float | None = None  # the chain's expected seconds per block (its settings)
    confirmations: int = 0  # blocks on top before a block's logs are emitted (its settings)

    def progress_sample(self, at: float, wall: float) -> ProgressSample:
        """Blocks: the emitted tip against the newest block it may reach, with both blocks' times.

        That block is the newest head less ``confirmations`` (weir is not behind for waiting on
        them), timed ``block_time`` a block before the head. A head known only by its number
        (eth_blockNumber, at a backfill's start: its header comes later) is timed from the tip:
        its time plus ``block_time`` per block between them.
        """
        head, head_time, block_time = self.head, self.head_time, self.block_time
        if head is not None and self.confirmations:
            head -= self.confirmations
            head_time = None if head_time is None or block_time is None else head_time - self.confirmations * block_time
        if head_time is None and head is not None and None not in (self.tip, self.tip_time, block_time):
            head_time = self.tip_time + (head - self.tip) * block_time  # type: ignore[operator]
        return ProgressSample(at=at, position=self.tip, head=head, position_time=self.tip_time, head_time=head_time)

    def saw_head(self, number: int, timestamp: float | None = None) -> None:
        """A head the node announced (newHeads) or answered (eth_blockNumber: no time)."""
        if self.head is None or number > self.head:
            self.head, self.head_time = number, timestamp
        elif number == self.head and self.head_time is None:
            self.head_time = timestamp


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
            self._malformed()
            raise MalformedHeader(reason) from None
        self.malformed_run = 0
        return header

    def dead_header(self, payload: bytes, reason: str) -> None:
        """Dead-letter a header weir will not link (no position: it was never applied); it goes out
        with the next chunk, or alone (:meth:`flush_dead`)."""
        log.warning("chain %s: dead letter: %s", self.partition, reason,
                    extra={"event": "dead_letter", "source": SOURCE, "partition": self.partition})
        self.pending_dead.append(DeadLetter(source=SOURCE, partition=self.partition, payload=payload,
                                            reason=reason, received=trio.current_time()))

    def implausible_head(self, header: Header, tip: Header) -> str | None:
        """Dead-letter a head :mod:`weir.codecs.ethereum_heads` judged implausible (never linked: a
        forged number would become the cursor). Returns why the node is to be refused once
        MALFORMED_RUN of them came in a row (``stats.refused`` says so until a head is followed),
        else None."""
        self.stats.implausible_heads += 1
        self.implausible_run += 1
        payload = json.dumps({"number": hex(header.number), "hash": header.hash, "parentHash": header.parent_hash}).encode()
        self.dead_header(payload, f"implausible head: block {header.number} ({header.hash}) after weir's tip "
                                  f"{tip.number} ({tip.hash}): its number does not follow its parent's, or is far "
                                  f"above the node's own head")
        if self.implausible_run < MALFORMED_RUN:
            return None
        self.implausible_run = 0
        self.stats.refused = f"{MALFORMED_RUN} implausible heads in a row from {self.shown_url}"
        log.error("chain %s: node refused: %s", self.partition, self.stats.refused,
                  extra={"event": "node_refused", "source": SOURCE, "partition": self.partition,
                         "reason": self.stats.refused})
        return self.stats.refused

    def followed_head(self) -> None:
        """A head weir follows: the node is believed again."""
        self.implausible_run = 0
        self.stats.refused = None

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

    def range_span(self) -> int:
        """Blocks per backfill range: ``backfill_blocks``, or fewer while :attr:`range_cap` holds
        after a reply over ``max_reply_bytes``."""
        return self.settings.backfill_blocks if self.range_cap is None else min(self.settings.backfill_blocks, self.range_cap)

    def range_read_whole(self) -> None:
        """A range came back whole: ask for twice as much next time, up to ``backfill_blocks``."""
        if self.range_cap is not None:
            span = self.range_span()
            self.range_cap = None if span * 2 >= self.settings.backfill_blocks else span * 2

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
            header = steps[-1].header
            retracted = steps[-1].kind == RETRACT
            self.stats.tip = header.number - 1 if retracted else header.number
            self.stats.tip_time = None if retracted else float(header.timestamp)
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
