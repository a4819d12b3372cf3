"""A simulated Ethereum node: JSON-RPC 2.0 over WebSocket (trio-websocket), with reorgs.

Methods: ``eth_chainId``, ``eth_blockNumber``, ``eth_getBlockByNumber``, ``eth_getBlockByHash``
(orphaned blocks stay known by hash, as a real node keeps side blocks), ``eth_getLogs`` (by
``blockHash`` or by range, with ``address`` / ``topics`` filters, a result cap and a block range cap
that answer error -32005 like geth, or as another provider words it), ``eth_subscribe("newHeads")``
/ ``eth_unsubscribe``, and batch requests (answered in a shuffled order). A block pinned by
``blockHash`` is never capped.

The chain (:class:`SimChain`) is a pure function of its :class:`EthereumSimConfig`: blocks of
ERC-20 / ERC-721 transfer logs every ``block_time`` seconds; with ``reorg_every`` set, now and then
the top 1..``max_reorg_depth`` blocks are replaced by a longer branch, whose heads are pushed (all
of them, or only the new tip, which makes the client walk back). :meth:`SimChain.canonical_logs` is
the final canonical chain the checker compares Redis with.

Malformed data: with ``malformed_log_every`` about one log in that many is stored malformed (a bad
``data``, ``address``, ``topics`` or ``blockHash``: the node always serves it so, like bad data in
its database; :attr:`SimChain.malformed` maps each one's dead-letter payload to its identity); with
``malformed_header_every`` every that-many-th header the node serves (pushed or answered) is
malformed in that one message only (a transient fault: asked again, the node answers well).

Other events: with ``approval_every`` about one log in that many is an ``Approval`` (topic0
:data:`APPROVAL_TOPIC`) instead of a ``Transfer``, so that a topic filter has something to leave out.

Faults of the connection: with ``reply_delay`` each reply waits a random while before it is sent, so
replies to calls in flight at once come back in any order (as from a node that answers calls
concurrently); :meth:`EthereumSim.mute_heads` silences the current ``newHeads`` subscriptions (the
WebSocket stays open, blocks keep coming, a new subscription is pushed heads again): a stuck
subscription, which only an idle watchdog notices. :attr:`EthereumSim.refusing` refuses new
connections (the node is down), :meth:`SimChain.forget` drops orphaned blocks (a node that pruned
its side blocks), :meth:`EthereumSim.lag` serves the chain only up to an older block until
:meth:`EthereumSim.catch_up` (a failover node, a backend still importing, a node restarted from an
older state), and :meth:`EthereumSim.record_calls` notes every call in the order it came.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterable
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from weir.codecs.ethereum_logs import ERC20_TRANSFER, raw_bytes, topic_of
from weir.codecs.jsonrpc import (
    INVALID_PARAMS,
    LIMIT_EXCEEDED,
    METHOD_NOT_FOUND,
    JsonRpcError,
    Request,
    encode,
    error_object,
    from_quantity,
    notification_text,
    parse_requests,
    reply_object,
    to_quantity,
)

log = logging.getLogger("weir.sim.ethereum")

GENESIS_TIME = 1_700_000_000
ZERO_HASH = "0x" + "0" * 64
# ERC-20 Approval(address indexed owner, address indexed spender, uint256 value); ERC-721's has the same topic0.
APPROVAL_TOPIC = topic_of("Approval(address,address,uint256)")


def contract_address(index: int) -> str:
    """The address of the simulator's token contract ``index`` (0 .. ``contracts`` - 1), lower case."""
    return "0x" + hashlib.sha256(b"contract%d" % index).hexdigest()[:40]


@attrs.frozen(kw_only=True)
class EthereumSimConfig:
    """What the simulated chain does.

    Attributes:
        chain_id: answered by eth_chainId.
        seed: everything random (hashes, logs, reorgs) derives from it.
        block_time: seconds between blocks (0: as fast as possible).
        logs_per_block: logs in each block (ERC-20 and ERC-721 transfers, from ``contracts`` contracts).
        history: blocks that exist before the node starts serving (genesis is block 0).
        blocks: blocks produced after start, then the chain stops (None: forever).
        reorg_every: a reorg happens at about one block in this many (0: never).
        min_reorg_depth, max_reorg_depth: how many blocks a reorg replaces.
        max_logs: eth_getLogs over a range answers an error above this many results.
        max_range: eth_getLogs answers an error for a range of more blocks than this (0: no cap).
        range_error_code, range_error_message: that error (``{limit}``: the cap exceeded); geth's
            by default, or a provider's wording.
        drop_every: close every connection each this many blocks (0: never).
        contracts: distinct token contracts.
        malformed_log_every: about one log in this many is malformed, persistently (0: none).
        malformed_header_every: every this-many-th header served is malformed, once (0: none).
        approval_every: about one log in this many is an ``Approval`` (:data:`APPROVAL_TOPIC`), not a
            ``Transfer`` (0: none). Drawn apart: the chain is otherwise the same with or without.
        reply_delay: each reply (to a call or a batch) is sent after a random 0..``reply_delay``
            seconds, so replies to concurrent calls arrive in any order (0: at once, in order).
        cap_pinned: ``max_logs`` caps eth_getLogs by ``blockHash`` too (a provider that caps every
            answer): a block with more logs is refused however it is asked for.
        fat_block_every: every block whose number is a multiple of this carries ``fat_logs`` logs
            instead of ``logs_per_block`` (0: none): replies too large for a client's limit.
        fat_logs: the logs of such a block.
        lagging_backend: every second connection is served by a backend this many blocks behind
            (two backends behind one URL, as a load balancer routes connections): its head, its
            blocks by number and by hash, its logs and its pushed heads end that far below the
            chain's head (0: one backend).
        reannounce: after every ``eth_subscribe("newHeads")``, push the node's last this-many heads
            again, oldest first (as a load-balanced provider does): blocks the client may already
            hold, at and below its cursor (0: none).
        live_after_connect: hold production (the ``blocks`` after ``history``) until the first
            client connects, so the chain grows from when someone listens, not from when the node
            starts (the chaos suite: its load then runs under the fault schedule however long the
            ingestor takes to start).

    At run time, :meth:`EthereumSim.mute_heads` stops pushing heads to the subscriptions that exist
    (the connection stays open and blocks keep coming): a stuck ``newHeads`` subscription.
    """

    chain_id: int = 1337
    seed: int = 1
    block_time: float = 0.05
    logs_per_block: int = 4
    history: int = 0
    blocks: int | None = None
    reorg_every: int = 0
    min_reorg_depth: int = 1
    max_reorg_depth: int = 3
    max_logs: int = 10_000
    max_range: int = 0
    range_error_code: int = LIMIT_EXCEEDED
    range_error_message: str = "query returned more than {limit} results"
    drop_every: int = 0
    contracts: int = 3
    malformed_log_every: int = 0
    malformed_header_every: int = 0
    approval_every: int = 0
    reply_delay: float = 0.0
    cap_pinned: bool = False
    reannounce: int = 0
    lagging_backend: int = 0
    fat_block_every: int = 0
    fat_logs: int = 200
    live_after_connect: bool = False

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.min_reorg_depth <= self.max_reorg_depth:
            raise ValueError(f"reorg depth range {self.min_reorg_depth}..{self.max_reorg_depth} is empty or below 1")
        for name in ("logs_per_block", "history", "reorg_every", "max_logs", "max_range", "drop_every", "contracts",
                     "malformed_log_every", "malformed_header_every", "approval_every", "reply_delay", "reannounce", "lagging_backend", "fat_block_every", "fat_logs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more")


def _hex32(data: bytes) -> str:
    return "0x" + hashlib.sha256(data).hexdigest()


@attrs.define(eq=False)
class SimChain:
    """The chain itself, no I/O: blocks by hash (orphans included), the canonical list, the logs."""

    config: EthereumSimConfig
    rng: random.Random = attrs.field(init=False)
    headers: dict[str, dict[str, Any]] = attrs.Factory(dict)
    logs: dict[str, list[dict[str, Any]]] = attrs.Factory(dict)
    canonical: list[str] = attrs.Factory(list)  # hashes, index = number
    produced: int = 0
    reorgs: list[tuple[int, int]] = attrs.Factory(list)  # (depth, at height)
    malformed: dict[bytes, tuple[str, int]] = attrs.Factory(dict)  # dead-letter payload -> (block hash, log index)
    _counter: int = 0
    _bad_rng: random.Random = attrs.field(init=False)
    _kind_rng: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)
        self._bad_rng = random.Random(self.config.seed + 0x6D616C)  # apart: the chain is the same with or without
        self._kind_rng = random.Random(self.config.seed + 0x617070)  # likewise
        self._extend()  # genesis
        for _ in range(self.config.history):
            self._extend()

    @property
    def head_number(self) -> int:
        return len(self.canonical) - 1

    def _extend(self) -> str:
        number = len(self.canonical)
        parent = self.canonical[-1] if self.canonical else ZERO_HASH
        self._counter += 1
        hash_ = _hex32(b"%d:%d:%d:%d" % (self.config.chain_id, self.config.seed, number, self._counter))
        self.headers[hash_] = {
            "number": to_quantity(number),
            "hash": hash_,
            "parentHash": parent,
            "timestamp": to_quantity(GENESIS_TIME + 12 * number),
            "miner": "0x" + "00" * 20,
            "gasUsed": "0x0",
        }
        fat = self.config.fat_block_every and number % self.config.fat_block_every == 0
        count = self.config.fat_logs if fat else self.config.logs_per_block
        self.logs[hash_] = [self._log(number, hash_, i) for i in range(count)] if number else []
        if self.config.malformed_log_every:
            for i, item in enumerate(self.logs[hash_]):
                if self._bad_rng.randrange(self.config.malformed_log_every) == 0:
                    self.logs[hash_][i] = bad = _malformed_log(item, len(self.malformed))
                    self.malformed[raw_bytes(bad)] = (hash_, i)
        self.canonical.append(hash_)
        return hash_

    def _log(self, number: int, block_hash: str, index: int) -> dict[str, Any]:
        rng = self.rng
        contract = contract_address(rng.randrange(max(1, self.config.contracts)))
        sender, receiver = ("0x" + "00" * 12 + rng.randbytes(20).hex() for _ in range(2))
        if rng.random() < 0.8:  # ERC-20: value in data
            topics, data = [ERC20_TRANSFER.topic0, sender, receiver], "0x" + rng.randrange(1 << 96).to_bytes(32, "big").hex()
        else:  # ERC-721: token id as the third indexed topic
            topics, data = [ERC20_TRANSFER.topic0, sender, receiver, "0x" + rng.randrange(1 << 32).to_bytes(32, "big").hex()], "0x"
        if self.config.approval_every and self._kind_rng.randrange(self.config.approval_every) == 0:
            topics[0] = APPROVAL_TOPIC
        return {
            "address": contract,
            "topics": topics,
            "data": data,
            "blockNumber": to_quantity(number),
            "blockHash": block_hash,
            "logIndex": to_quantity(index),
            "transactionHash": _hex32(b"tx:%s:%d" % (block_hash.encode(), index)),
            "transactionIndex": to_quantity(index),
            "removed": False,
        }

    def step(self) -> tuple[list[str], bool]:
        """Produce the next block (or a reorg); returns the new canonical hashes to announce and
        whether only the tip should be pushed."""
        self.produced += 1
        cfg = self.config
        if cfg.reorg_every and self.head_number > 1 and self.rng.randrange(cfg.reorg_every) == 0:
            return self.reorg(self.rng.randint(cfg.min_reorg_depth, cfg.max_reorg_depth)), self.rng.random() < 0.5
        return [self._extend()], False

    def reorg(self, depth: int) -> list[str]:
        """Replace the top ``depth`` blocks by a branch one block longer; returns the new hashes."""
        depth = min(depth, self.head_number)
        at = self.head_number
        del self.canonical[len(self.canonical) - depth :]
        new = [self._extend() for _ in range(depth + 1)]
        self.reorgs.append((depth, at))
        return new

    def forget(self, hash_: str) -> None:
        """Drop an orphaned block: the node no longer serves it by hash (pruned side blocks)."""
        if hash_ in self.canonical:
            raise ValueError(f"block {hash_} is canonical")
        del self.headers[hash_], self.logs[hash_]

    def block_by_number(self, number: int) -> dict[str, Any] | None:
        return self.headers[self.canonical[number]] if 0 <= number < len(self.canonical) else None

    def malformed_logs(self, up_to: int | None = None) -> set[tuple[str, int]]:
        """(block hash, log index) of the malformed logs on the canonical chain (up to block ``up_to``)."""
        last = self.head_number if up_to is None else up_to
        canonical = set(self.canonical[: last + 1])
        return {identity for identity in self.malformed.values() if identity[0] in canonical}

    def canonical_logs(self, up_to: int | None = None) -> list[tuple[str, int]]:
        """(block hash, log index) of every log on the canonical chain (up to block ``up_to``)."""
        last = self.head_number if up_to is None else up_to
        return [
            (hash_, from_quantity(item["logIndex"]))
            for hash_ in self.canonical[: last + 1]
            for item in self.logs[hash_]
        ]


def _malformed_log(item: dict[str, Any], n: int) -> dict[str, Any]:
    """A copy of ``item`` with one field broken (which one cycles with ``n``); block hash and index stay findable."""
    bad = dict(item)
    kind = n % 4
    if kind == 0:
        bad["data"] = "0xnot-hex"
    elif kind == 1:
        bad["address"] = "0x1234"
    elif kind == 2:
        bad["topics"] = "not a list"
    else:  # the block it belongs to cannot be read: the client must fetch by block hash to place it
        bad["blockHash"] = "0x" + "zz" * 32
    return bad


def _malformed_header(header: dict[str, Any], n: int) -> dict[str, Any]:
    bad = dict(header)
    kind = n % 3
    if kind == 0:
        del bad["number"]
    elif kind == 1:
        bad["hash"] = "0x1234"
    else:
        bad["parentHash"] = None
    return bad


def _matches(item: dict[str, Any], addresses: set[str] | None, topics: list[Any]) -> bool:
    if addresses is not None and item["address"] not in addresses:
        return False
    for i, wanted in enumerate(topics):
        if wanted is None:
            continue
        options = {wanted.lower()} if isinstance(wanted, str) else {w.lower() for w in wanted}
        have = item["topics"]
        if not isinstance(have, list) or i >= len(have) or have[i] not in options:
            return False
    return True


@attrs.define(eq=False)
class _Conn:
    ws: WebSocketConnection
    scope: trio.CancelScope
    outbox_send: trio.MemorySendChannel[str]
    subscriptions: set[str] = attrs.Factory(set)
    fresh_subscriptions: list[str] = attrs.Factory(list)  # made by the last message (reannounce)
    behind: int = 0  # blocks this connection's backend is behind the chain (lagging_backend)


@attrs.define(eq=False)
class EthereumSim:
    """The node: serves :class:`SimChain` over WebSocket and grows it on a timer."""

    config: EthereumSimConfig
    chain: SimChain = attrs.field(init=False)
    port: int = 0
    connections: set[_Conn] = attrs.Factory(set)
    finished: trio.Event = attrs.Factory(trio.Event)
    requests: dict[str, int] = attrs.Factory(dict)  # method -> count
    drops: int = 0
    paused: bool = False
    headers_served: int = 0
    malformed_headers: int = 0  # malformed headers served
    muted: set[str] = attrs.Factory(set)  # subscriptions that are no longer pushed heads (mute_heads)
    refusing: bool = False  # new connections are refused (HTTP 503): the node is down
    calls: list[tuple[str, Any]] | None = None  # (method, params) in arrival order, once record_calls()
    lag_head: int | None = None  # the newest block served while lagging (lag()); None: the whole chain
    lag_by_hash: bool = False  # while lagging, blocks above lag_head are still served by hash
    _sub_counter: int = 0
    _accepted: int = 0
    lagging_caught_up: bool = False  # the chain stopped and the lagging backend has every block
    connected: trio.Event = attrs.Factory(trio.Event)  # a first client connected (config.live_after_connect)
    _order_rng: random.Random = attrs.Factory(lambda: random.Random(7))
    _delay_rng: random.Random = attrs.Factory(lambda: random.Random(11))

    def __attrs_post_init__(self) -> None:
        self.chain = SimChain(self.config)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def drop_connections(self) -> int:
        """Close every client connection (subscriptions die with them); returns how many."""
        count = len(self.connections)
        for conn in list(self.connections):
            conn.scope.cancel()
        self.drops += 1
        return count

    def mute_heads(self) -> int:
        """Stop pushing heads to every current ``newHeads`` subscription, for good (the connection
        stays open, blocks keep coming; a subscription made later is pushed heads); returns how many."""
        before = len(self.muted)
        for conn in self.connections:
            self.muted |= conn.subscriptions
        return len(self.muted) - before

    def lag(self, head: int, *, by_hash: bool = False) -> None:
        """Serve the chain only up to block ``head`` until :meth:`catch_up`: ``eth_blockNumber``,
        ``latest``, blocks by number and ranges of logs end there, and no head is pushed. Blocks
        above it (orphans too) are unknown by hash, unless ``by_hash``: imported, but not yet the
        node's chain. The chain itself goes on as configured, hidden."""
        self.lag_head, self.lag_by_hash = head, by_hash

    def catch_up(self) -> None:
        """End :meth:`lag`: the whole chain is served again, and its tip pushed."""
        self.lag_head = None
        self._announce(self.chain.canonical[-1:])

    def _head(self, conn: _Conn | None = None) -> int:
        """The newest block number served (to ``conn``: its backend may be behind)."""
        head = self.chain.head_number - (conn.behind if conn is not None else 0)
        return head if self.lag_head is None else min(head, self.lag_head)

    def _known(self, hash_: str, conn: _Conn | None = None) -> bool:
        """Whether block ``hash_`` is served by hash (it exists, and is not hidden by :meth:`lag`
        or by ``conn``'s backend being behind)."""
        header = self.chain.headers.get(hash_)
        if header is None:
            return False
        number = from_quantity(header["number"])
        if conn is not None and conn.behind and number > self._head(conn):
            return False
        return self.lag_head is None or self.lag_by_hash or number <= self.lag_head

    def record_calls(self) -> list[tuple[str, Any]]:
        """Note every call from now on, in the order the node reads them; returns the (live) list."""
        self.calls = []
        return self.calls

    async def produce(self) -> None:
        """Grow the chain every ``block_time`` until ``blocks`` were produced."""
        cfg = self.config
        if cfg.live_after_connect:
            await self.connected.wait()
        while cfg.blocks is None or self.chain.produced < cfg.blocks:
            await trio.sleep(cfg.block_time)
            if self.paused:
                continue
            new, tip_only = self.chain.step()
            self._announce(new[-1:] if tip_only else new)
            if cfg.drop_every and self.chain.produced % cfg.drop_every == 0:
                self.drop_connections()
        if cfg.lagging_backend:
            # the lagging backend imports the last blocks too, as late as it imported the others
            await trio.sleep(cfg.lagging_backend * cfg.block_time)
            self.lagging_caught_up = True
            for conn in self.connections:
                conn.behind = 0
            self._announce(self.chain.canonical[-1:])
        self.finished.set()

    def _announce(self, hashes: Iterable[str]) -> None:
        if self.lag_head is not None:
            return  # a node behind has not seen these blocks yet
        hashes = list(hashes)
        for conn in list(self.connections):
            # a backend behind announces the block that far below each new one, when it has it
            seen = [self.chain.canonical[n] for n in sorted({from_quantity(self.chain.headers[h]["number"]) - conn.behind
                                                             for h in hashes}) if n >= 0] if conn.behind else hashes
            for sub in conn.subscriptions - self.muted:
                for hash_ in seen:
                    text = notification_text("eth_subscription", {"subscription": sub, "result": self._serve_header(self.chain.headers[hash_])})
                    try:
                        conn.outbox_send.send_nowait(text)
                    except trio.WouldBlock:  # a subscriber that cannot keep up is dropped, like geth does
                        conn.scope.cancel()
                    except trio.ClosedResourceError:
                        pass

    def forge_head(self, number: int, *, parent: str | None = None) -> dict[str, Any]:
        """Push a head that is no block of the chain: number ``number``, child of ``parent``
        (default: the tip). A lying or corrupt node; returns the header pushed."""
        parent = parent or self.chain.canonical[-1]
        header = {"number": to_quantity(number), "hash": _hex32(b"forged:%d:%s" % (number, parent.encode())),
                  "parentHash": parent, "timestamp": to_quantity(GENESIS_TIME + 12 * min(number, 1 << 40)),
                  "miner": "0x" + "00" * 20, "gasUsed": "0x0"}
        for conn in list(self.connections):
            for sub in conn.subscriptions - self.muted:
                try:
                    conn.outbox_send.send_nowait(notification_text("eth_subscription", {"subscription": sub, "result": header}))
                except (trio.WouldBlock, trio.ClosedResourceError):
                    pass
        return header

    def _reannounce(self, conn: _Conn) -> None:
        """Push the last ``reannounce`` heads to the subscriptions just made on ``conn``."""
        fresh, conn.fresh_subscriptions = conn.fresh_subscriptions, []
        if not fresh or not self.config.reannounce or self.lag_head is not None:
            return
        for hash_ in self.chain.canonical[: self._head(conn) + 1][-self.config.reannounce :]:
            for sub in fresh:
                text = notification_text("eth_subscription", {"subscription": sub, "result": self._serve_header(self.chain.headers[hash_])})
                try:
                    conn.outbox_send.send_nowait(text)
                except (trio.WouldBlock, trio.ClosedResourceError):
                    return

    async def handle(self, request: WebSocketRequest) -> None:
        if self.refusing:
            await request.reject(503, body=b"node unavailable")
            return
        ws = await request.accept()
        self.connected.set()
        outbox_send, outbox_receive = trio.open_memory_channel[str](4096)
        self._accepted += 1
        lagging = self._accepted % 2 == 0 and not self.lagging_caught_up  # round robin over two backends
        behind = self.config.lagging_backend if lagging else 0
        with trio.CancelScope() as scope:
            conn = _Conn(ws=ws, scope=scope, outbox_send=outbox_send, behind=behind)
            self.connections.add(conn)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, ws, outbox_receive)
                    try:
                        while True:
                            message = await ws.get_message()
                            reply = self.answer(conn, message)
                            if reply is None:
                                continue
                            if self.config.reply_delay:
                                delay = self._delay_rng.uniform(0, self.config.reply_delay)
                                nursery.start_soon(self._send_later, outbox_send, reply, delay)
                            else:
                                await outbox_send.send(reply)
                            self._reannounce(conn)
                    except ConnectionClosed:
                        nursery.cancel_scope.cancel()
            finally:
                self.connections.discard(conn)
                outbox_send.close()
        if scope.cancelled_caught:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await ws.aclose(code=1001, reason="dropped by the simulator")

    @staticmethod
    async def _send_later(outbox: trio.MemorySendChannel[str], text: str, delay: float) -> None:
        await trio.sleep(delay)
        try:
            await outbox.send(text)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _writer(self, ws: WebSocketConnection, outbox: trio.MemoryReceiveChannel[str]) -> None:
        try:
            async for text in outbox:
                await ws.send_message(text)
        except ConnectionClosed:
            pass

    def answer(self, conn: _Conn, message: str | bytes) -> str | None:
        try:
            requests, is_batch = parse_requests(message)
        except JsonRpcError as exc:
            return encode(error_object(None, exc))
        replies = []
        for request in requests:
            if isinstance(request, JsonRpcError):
                replies.append(error_object(None, request))
                continue
            self.requests[request.method] = self.requests.get(request.method, 0) + 1
            if self.calls is not None:
                self.calls.append((request.method, request.params))
            try:
                result = self._call(conn, request)
            except JsonRpcError as exc:
                replies.append(error_object(request.id, exc))
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                replies.append(error_object(request.id, JsonRpcError(INVALID_PARAMS, f"invalid params: {exc}")))
            else:
                replies.append(reply_object(request.id, result))
        if is_batch:
            self._order_rng.shuffle(replies)  # batch answers may come in any order
            return encode(replies)
        return encode(replies[0])

    def _serve_header(self, header: dict[str, Any] | None) -> dict[str, Any] | None:
        """``header`` as served: every ``malformed_header_every``-th one is broken (in this message only)."""
        every = self.config.malformed_header_every
        if header is None or not every:
            return header
        self.headers_served += 1
        if self.headers_served % every:
            return header
        self.malformed_headers += 1
        return _malformed_header(header, self.malformed_headers)

    def _call(self, conn: _Conn, request: Request) -> Any:
        chain = self.chain
        params = request.params
        method = request.method
        if method == "eth_chainId":
            return to_quantity(self.config.chain_id)
        if method == "eth_blockNumber":
            return to_quantity(self._head(conn))
        if method == "eth_getBlockByNumber":
            tag = params[0]
            number = self._head(conn) if tag in ("latest", "safe", "finalized") else from_quantity(tag, "block number")
            return self._serve_header(chain.block_by_number(number) if number <= self._head(conn) else None)
        if method == "eth_getBlockByHash":
            hash_ = str(params[0]).lower()
            return self._serve_header(chain.headers[hash_] if self._known(hash_, conn) else None)
        if method == "eth_getLogs":
            return self._get_logs(params[0], conn)
        if method == "eth_subscribe":
            if params[:1] != ["newHeads"]:
                raise JsonRpcError(INVALID_PARAMS, f"unsupported subscription {params[:1]}")
            self._sub_counter += 1
            sub = "0x%032x" % self._sub_counter
            conn.subscriptions.add(sub)
            conn.fresh_subscriptions.append(sub)
            return sub
        if method == "eth_unsubscribe":
            found = params[0] in conn.subscriptions
            conn.subscriptions.discard(params[0])
            return found
        raise JsonRpcError(METHOD_NOT_FOUND, f"the method {method} does not exist/is not available")

    def _get_logs(self, filter_: dict[str, Any], conn: _Conn | None = None) -> list[dict[str, Any]]:
        chain = self.chain
        address = filter_.get("address")
        addresses = None if address is None else {a.lower() for a in ([address] if isinstance(address, str) else address)}
        topics = filter_.get("topics") or []
        cfg = self.config
        if "blockHash" in filter_:
            if "fromBlock" in filter_ or "toBlock" in filter_:
                raise JsonRpcError(INVALID_PARAMS, "cannot specify both BlockHash and FromBlock/ToBlock")
            hash_ = str(filter_["blockHash"]).lower()
            if not self._known(hash_, conn):
                raise JsonRpcError(-32000, "unknown block")
            found = [item for item in chain.logs[hash_] if _matches(item, addresses, topics)]
            if cfg.cap_pinned and len(found) > cfg.max_logs:
                raise JsonRpcError(cfg.range_error_code, cfg.range_error_message.format(limit=cfg.max_logs))
            return found

        def bound(name: str) -> int:
            tag = filter_.get(name, "latest")
            return self._head(conn) if tag in ("latest", "safe", "finalized") else from_quantity(tag, name)

        first, last = bound("fromBlock"), min(bound("toBlock"), self._head(conn))
        if cfg.max_range and last - first + 1 > cfg.max_range:
            raise JsonRpcError(cfg.range_error_code, cfg.range_error_message.format(limit=cfg.max_range))
        out: list[dict[str, Any]] = []
        for number in range(first, last + 1):
            out += (item for item in chain.logs[chain.canonical[number]] if _matches(item, addresses, topics))
            if len(out) > cfg.max_logs:
                raise JsonRpcError(cfg.range_error_code, cfg.range_error_message.format(limit=cfg.max_logs))
        return out


async def serve_ethereum_sim(
    config: EthereumSimConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[EthereumSim] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve a simulated node until cancelled; ``task_status.started(sim)`` once it listens."""
    sim = EthereumSim(config)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, sim.handle, host, port, None)
        sim.port = server.port
        nursery.start_soon(sim.produce)
        task_status.started(sim)
