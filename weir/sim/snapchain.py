"""A simulated Snapchain node: per-shard event logs behind the real ``HubService`` (grpclib, asyncio).

It speaks the network's wire protocol (paths ``/HubService/Subscribe``, ``GetInfo``,
``GetEvents``, ``GetEvent``) so the ingestor's client code runs unchanged against it, and it
behaves like the node where an ingestor can notice (shared/notes/protocols.md §1, checked against
farcasterxyz/snapchain ``src/network/server.rs``):

- Subscribe with ``shard_index`` 0 or above the shard count is rejected (INVALID_ARGUMENT);
  without ``shard_index`` every user shard is streamed, interleaved.
- ``from_id`` present: stored events with ``id >= from_id`` are replayed, then live events
  follow; absent: live only. An older ``from_id`` than retained silently starts at the oldest
  retained event. ``event_types`` filters; an empty list sends nothing (the node tests
  ``event_types.contains(type)``).
- A subscriber that falls behind retention is skipped forward silently, as the node does.

Unlike the node, the switch from replay to live is gapless (the node has a known window there).

Events are kept pre-encoded and pre-framed (gRPC's 5-byte prefix): a subscriber's batch goes out
as one HTTP/2 write of many messages, or with ``framing="one"`` one DATA frame per message. Control hooks for the chaos suite: ``drop_streams()`` and
``set_error()``.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
from collections import deque
from collections.abc import Iterable
from ssl import SSLContext

import grpclib.const
import grpclib.server
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from weir.codecs.grpc_raw import RawBytesCodec
from weir.codecs.protowire import encode_varint
from weir.protos.snapchain import (
    DbStats,
    EventRequest,
    EventsRequest,
    GetInfoRequest,
    GetInfoResponse,
    ShardInfo,
    SubscribeRequest,
)
from weir.codecs.farcaster_keys import BLOCK_CONFIRMED
from weir.sim.farcaster_faults import Injection
from weir.sim.farcaster_faults import apply as apply_fault
from weir.sim.farcaster_data import (
    SnapchainSimConfig,
    ShardEventGenerator,
    generate_offered,
)

__all__ = [
    "ShardLog",
    "SnapchainSim",
    "SnapchainSimConfig",
    "generate_offered",
    "serve_snapchain",
]

log = logging.getLogger("weir.sim.snapchain")

VERSION = "weir-sim-0.1"
DEFAULT_PAGE_SIZE = 1000
MAX_BATCH_EVENTS = 512
_FRAME_PREFIX = b"\x00"  # gRPC message prefix: not compressed, then a 4-byte big-endian length


def _type_of(payload: bytes) -> int:
    """The HubEventType of raw bytes served as they are (0 when field 1 does not come first)."""
    if payload[:1] == b"\x08" and len(payload) > 1 and payload[1] < 0x80:
        return payload[1]
    return 0


def _frame(payload: bytes) -> bytes:
    return _FRAME_PREFIX + len(payload).to_bytes(4, "big") + payload


class ShardLog:
    """One shard's events: generated lazily (deterministically), released block by block.

    Positions are absolute indexes into the shard's event sequence: ``released`` events have been
    offered; ``oldest`` is the first one still retained.
    """

    def __init__(self, config: SnapchainSimConfig, shard: int) -> None:
        self.config = config
        self.shard = shard
        self._generator = ShardEventGenerator(config, shard)
        self._ids: list[int] = []
        self._types: list[int] = []
        self._framed: list[bytes] = []
        self._base = 0  # absolute position of _ids[0]
        self._pending: deque[int] = deque()  # sizes of generated blocks not yet released
        self._released_blocks: deque[tuple[int, int]] = deque()  # (start, size) of retained blocks
        self.released = 0
        self.oldest = 0
        self.max_height = 0
        self.num_messages = 0
        self._changed = asyncio.Event()
        self._exhausted = False
        self._made = 0  # events generated (before injections): the index Injection.at counts
        self._injections: dict[int, list[Injection]] = {}
        for injection in config.injections:
            if injection.shard == shard:
                self._injections.setdefault(injection.at, []).append(injection)

    # -- generation and release ----------------------------------------------------------------

    @property
    def generated(self) -> int:
        return self._base + len(self._ids)

    @property
    def finished(self) -> bool:
        """True once ``total`` events were released: the log will not grow any more."""
        total = self.config.total
        return total is not None and self.released >= total

    def _generate_block(self) -> bool:
        block = self._generator.next_block()
        if block is None:
            self._exhausted = True
            return False
        size = 0
        for id_, event_type, payload in block:
            inserted: list[bytes] = []
            for injection in self._injections.get(self._made, ()):
                if injection.action == "insert":
                    inserted.append(injection.payload)
                else:
                    payload = apply_fault(payload, injection)
            self._made += 1
            for served in (payload, *inserted):
                # An inserted item sorts with the event before it (its own id may be anything):
                # a resume at a later id does not send it again.
                self._ids.append(id_)
                self._types.append(event_type if served is payload else _type_of(served))
                self._framed.append(_frame(served))
                size += 1
        self._pending.append(size)
        return True

    def pregenerate(self, count: int | None) -> None:
        """Generate (without releasing) until ``count`` events exist, or to ``total`` if None."""
        while (count is None or self.generated < count) and not self._exhausted:
            if not self._generate_block():
                break

    def release_block(self) -> int:
        """Release the next block (generating it if needed); return its size (0 = finished)."""
        if not self._pending and not self._generate_block():
            return 0
        size = self._pending.popleft()
        start = self.released
        self.released += size
        self._released_blocks.append((start, size))
        last = self.released - 1 - self._base
        self.max_height = self._ids[last] >> 14
        self.num_messages += size - 1
        self._prune()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return size

    def release_until(self, count: int) -> None:
        while self.released < count:
            if not self.release_block():
                break

    def _prune(self) -> None:
        retention = self.config.retention
        if retention is None:
            return
        blocks = self._released_blocks
        while self.released - self.oldest > retention and blocks:
            start, size = blocks.popleft()
            self.oldest = start + size
        drop = self.oldest - self._base
        if drop > 4096 and drop * 2 > len(self._ids):  # compact now and then, not per block
            del self._ids[:drop], self._types[:drop], self._framed[:drop]
            self._base = self.oldest

    async def wait_released(self, position: int) -> None:
        """Wait until more than ``position`` events are released."""
        while self.released <= position:
            await self._changed.wait()

    # -- reading -------------------------------------------------------------------------------

    def position_of(self, from_id: int) -> int:
        """Absolute position of the first retained, released event with id >= ``from_id``."""
        lo = self.oldest - self._base
        hi = self.released - self._base
        return bisect.bisect_left(self._ids, from_id, lo, hi) + self._base

    def framed(self, start: int, stop: int, event_types: frozenset[int] | None = None) -> list[bytes]:
        """Pre-framed events at positions [start, stop), optionally only of ``event_types``."""
        lo, hi = start - self._base, stop - self._base
        if event_types is None:
            return self._framed[lo:hi]
        types = self._types
        framed = self._framed
        return [framed[i] for i in range(lo, hi) if types[i] in event_types]

    def event(self, position: int) -> tuple[int, bytes]:
        i = position - self._base
        return self._ids[i], self._framed[i][5:]

    def retained(self) -> list[tuple[int, bytes]]:
        """The released events still retained, as (id, HubEvent bytes)."""
        return [self.event(p) for p in range(self.oldest, self.released)]

    def offered(self) -> list[tuple[int, bytes]]:
        """Every event released so far (pruned ones included), as (id, HubEvent bytes)."""
        if self._base == 0:
            return [(self._ids[i], self._framed[i][5:]) for i in range(self.released)]
        return generate_offered(self.config, self.shard, self.released)


class SnapchainSim:
    """The simulated node: shard logs, producers and the HubService (asyncio)."""

    def __init__(self, config: SnapchainSimConfig) -> None:
        self.config = config
        self.logs = {shard: ShardLog(config, shard) for shard in range(1, config.shards + 1)}
        self._server: grpclib.server.Server | None = None
        self._producers: list[asyncio.Task[None]] = []
        self._streams: dict[asyncio.Task[object], bool] = {}  # open Subscribe handlers -> dropped?
        self._error: Status | None = None
        self._any_changed = asyncio.Event()
        self._subscribed = asyncio.Event()  # set by the first Subscribe (config.live_after_subscribe)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0, ssl: SSLContext | None = None) -> int:
        """Create the history, start producing and serving (over TLS with ``ssl``); return the bound port."""
        for shard_log in self.logs.values():
            if self.config.pregenerate:
                shard_log.pregenerate(self.config.total)
            shard_log.release_until(self.config.history)
        self._server = grpclib.server.Server([self], codec=RawBytesCodec())
        await self._server.start(host, port, ssl=ssl)
        sockets = self._server._server.sockets if self._server._server is not None else []
        bound = sockets[0].getsockname()[1]
        self._producers = [asyncio.ensure_future(self._produce(shard_log)) for shard_log in self.logs.values()]
        log.info("serving %d shards on %s:%d", len(self.logs), host, bound)
        return int(bound)

    def close(self) -> None:
        for task in self._producers:
            task.cancel()
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        for task in self._producers:
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._server is not None:
            await self._server.wait_closed()

    async def _produce(self, shard_log: ShardLog) -> None:
        rate = self.config.rate
        loop = asyncio.get_running_loop()
        if self.config.live_after_subscribe:
            await self._subscribed.wait()
        started = loop.time()
        first = shard_log.released
        while True:
            if rate > 0:
                due = started + (shard_log.released - first) / rate
                delay = due - loop.time()
                await asyncio.sleep(delay if delay > 0 else 0)
            else:
                await asyncio.sleep(0)
            if not shard_log.release_block():
                return  # total reached: streams stay open, idle
            changed, self._any_changed = self._any_changed, asyncio.Event()
            changed.set()

    # -- control hooks -------------------------------------------------------------------------

    def drop_streams(self) -> int:
        """End every open Subscribe stream now with UNAVAILABLE; return how many."""
        for task in self._streams:
            self._streams[task] = True
            task.cancel()
        return len(self._streams)

    def set_error(self, status: Status | None) -> None:
        """Answer every new call with ``status`` (None: serve normally again)."""
        self._error = status

    def offered(self, shard: int) -> list[tuple[int, bytes]]:
        return self.logs[shard].offered()

    # -- service -------------------------------------------------------------------------------

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        unary = grpclib.const.Cardinality.UNARY_UNARY
        return {
            "/HubService/Subscribe": grpclib.const.Handler(
                self._subscribe, grpclib.const.Cardinality.UNARY_STREAM, SubscribeRequest, bytes
            ),
            "/HubService/GetInfo": grpclib.const.Handler(self._get_info, unary, GetInfoRequest, GetInfoResponse),
            "/HubService/GetEvent": grpclib.const.Handler(self._get_event, unary, EventRequest, bytes),
            "/HubService/GetEvents": grpclib.const.Handler(self._get_events, unary, EventsRequest, bytes),
        }

    def _check_injected_error(self) -> None:
        if self._error is not None:
            raise GRPCError(self._error, "weir-sim: injected error")

    def _shard_log(self, shard_index: int | None) -> ShardLog:
        shard_log = self.logs.get(shard_index) if shard_index is not None else None
        if shard_log is None:
            raise GRPCError(Status.INVALID_ARGUMENT, f"Invalid shard id {shard_index}")
        return shard_log

    async def _subscribe(self, stream: grpclib.server.Stream) -> None:  # type: ignore[type-arg]
        request: SubscribeRequest | None = await stream.recv_message()
        assert request is not None
        self._subscribed.set()
        self._check_injected_error()
        logs = [self._shard_log(request.shard_index)] if request.shard_index is not None else list(self.logs.values())
        event_types = frozenset(int(t) for t in request.event_types)
        from_id = request.from_id
        positions = [
            shard_log.position_of(from_id) if from_id is not None else shard_log.released for shard_log in logs
        ]
        task = asyncio.current_task()
        assert task is not None
        self._streams[task] = False
        try:
            await stream.send_initial_metadata()
            if not event_types:  # the node sends nothing when no type is asked for
                await asyncio.Event().wait()
            await self._stream_events(stream, logs, positions, event_types)
        except asyncio.CancelledError:
            if self._streams.get(task):
                task.uncancel()
                raise GRPCError(Status.UNAVAILABLE, "weir-sim: stream dropped") from None
            raise
        finally:
            self._streams.pop(task, None)

    async def _stream_events(
        self,
        stream: grpclib.server.Stream,  # type: ignore[type-arg]
        logs: list[ShardLog],
        positions: list[int],
        event_types: frozenset[int],
    ) -> None:
        send = _raw_sender(stream, self.config.framing)
        wanted = None if event_types >= _ALL_TYPES else event_types
        while True:
            sent_any = False
            for i, shard_log in enumerate(logs):
                position = max(positions[i], shard_log.oldest)  # lagging: skipped forward silently
                stop = min(shard_log.released, position + MAX_BATCH_EVENTS)
                if position < stop:
                    batch = shard_log.framed(position, stop, wanted)
                    positions[i] = stop
                    if batch:
                        await send(batch)
                    sent_any = True
            if not sent_any:
                if len(logs) == 1:
                    await logs[0].wait_released(positions[0])
                else:
                    await self._any_changed.wait()

    async def _get_info(self, stream: grpclib.server.Stream) -> None:  # type: ignore[type-arg]
        await stream.recv_message()
        self._check_injected_error()
        infos = [
            ShardInfo(shard_id=shard, max_height=shard_log.max_height, num_messages=shard_log.num_messages)
            for shard, shard_log in self.logs.items()
        ]
        block_shard = ShardInfo(shard_id=0, max_height=max((i.max_height for i in infos), default=0))
        await stream.send_message(
            GetInfoResponse(
                version=VERSION,
                db_stats=DbStats(num_messages=sum(i.num_messages for i in infos)),
                peer_id="weir-sim",
                num_shards=len(self.logs),
                shard_infos=[block_shard, *infos],
            )
        )

    async def _get_event(self, stream: grpclib.server.Stream) -> None:  # type: ignore[type-arg]
        request: EventRequest | None = await stream.recv_message()
        assert request is not None
        self._check_injected_error()
        shard_log = self._shard_log(request.shard_index)
        position = shard_log.position_of(request.id)
        if position < shard_log.released:
            id_, payload = shard_log.event(position)
            if id_ == request.id:
                await stream.send_message(payload)
                return
        raise GRPCError(Status.NOT_FOUND, f"Event not found: {request.id}")

    async def _get_events(self, stream: grpclib.server.Stream) -> None:  # type: ignore[type-arg]
        request: EventsRequest | None = await stream.recv_message()
        assert request is not None
        self._check_injected_error()
        if request.reverse:
            raise GRPCError(Status.INVALID_ARGUMENT, "weir-sim: reverse is not supported")
        logs = [self._shard_log(request.shard_index)] if request.shard_index is not None else list(self.logs.values())
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        starts = _decode_page_token(request.page_token, len(logs), request.start_id)
        stop_id = request.stop_id
        events: list[bytes] = []
        next_starts: list[int | None] = []
        for shard_log, start_id in zip(logs, starts):
            if start_id is None or len(events) >= page_size:
                next_starts.append(start_id)
                continue
            position = shard_log.position_of(start_id)
            end = shard_log.released if stop_id is None else shard_log.position_of(stop_id)
            take = max(0, min(end - position, page_size - len(events)))
            events.extend(shard_log.event(p)[1] for p in range(position, position + take))
            more = position + take < end
            next_starts.append(shard_log.event(position + take)[0] if more else None)
        body = b"".join(_ld_events(events))
        if any(s is not None for s in next_starts):
            token = json.dumps(next_starts).encode()
            body += b"\x12" + encode_varint(len(token)) + token
        await stream.send_message(body)


_ALL_TYPES = frozenset({1, 2, 3, 6, 9, 10, BLOCK_CONFIRMED})


def _ld_events(events: Iterable[bytes]) -> Iterable[bytes]:
    for payload in events:
        yield b"\x0a" + encode_varint(len(payload)) + payload


def _decode_page_token(token: bytes | None, shards: int, start_id: int) -> list[int | None]:
    """Per-shard next ids (None: that shard is done); no token: every shard from ``start_id``."""
    if not token:
        return [start_id] * shards
    try:
        starts = json.loads(token)
    except ValueError:
        starts = None
    if not isinstance(starts, list) or len(starts) != shards or not all(s is None or isinstance(s, int) for s in starts):
        raise GRPCError(Status.INVALID_ARGUMENT, "Invalid page token")
    return starts


def _raw_sender(stream: grpclib.server.Stream, framing: str):  # type: ignore[no-untyped-def,type-arg]
    """An async function sending a list of pre-framed messages, ``framing`` as SnapchainSimConfig says.

    grpclib writes one DATA frame per ``send_message``; gRPC allows many messages per frame, so
    ``packed`` hands the batch to the HTTP/2 stream in one write (split only at the peer's maximum
    frame size and flow control), and ``one`` writes each message by itself: one DATA frame each.
    Falls back to ``send_message`` per event if grpclib's internals are not what this expects.
    """
    h2_stream = getattr(stream, "_stream", None)
    send_data = getattr(h2_stream, "send_data", None)
    if send_data is not None and framing == "packed":

        async def send_batch(batch: list[bytes]) -> None:
            await send_data(b"".join(batch))

        return send_batch

    if send_data is not None:

        async def send_one_by_one(batch: list[bytes]) -> None:
            for framed in batch:
                await send_data(framed)

        return send_one_by_one

    async def send_each(batch: list[bytes]) -> None:
        for framed in batch:
            await stream.send_message(framed[5:])

    return send_each


async def serve_snapchain(
    config: SnapchainSimConfig, host: str = "127.0.0.1", port: int = 0, ssl: SSLContext | None = None
) -> tuple[SnapchainSim, int]:
    """Start a simulated node in the running asyncio loop; return it and its bound port.

    ``ssl``: serve gRPC over TLS (a server context offering ALPN ``h2``), as the public nodes do.

    Stop it with ``sim.close(); await sim.wait_closed()``.
    """
    sim = SnapchainSim(config)
    bound = await sim.start(host, port, ssl)
    return sim, bound
