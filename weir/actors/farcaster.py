"""Farcaster connection actor: one Snapchain shard's Subscribe stream -> chunks of events.

The gRPC stream is read in asyncio (grpclib) as raw bytes, never decoded, and crosses into trio a
list at a time (weir.bridge). Here each HubEvent's routing keys are scanned, malformed data becomes
a dead letter, gaps are reported, and a chunk per received list goes down the pipeline. On any
network fault the actor reconnects with backoff and resumes from the last id it received; a new
incarnation (after a crash) resumes from the persisted cursor instead.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import attrs
import trio

from weir.actors.grpc_bulk import message_lists
from weir.actors.reconnect import reconnect_forever
from weir.actors.stopping import until_stopped
from weir.bridge import call_asyncio, pump_batches, trio_sender
from weir.codecs.farcaster_gaps import Gap, GapDetector
from weir.codecs.farcaster_keys import (
    BLOCK_CONFIRMED,
    FARCASTER_EPOCH_UNIX,
    HUB_EVENT_TYPE_BY_NAME,
    HUB_EVENT_TYPES,
    MERGE_FAILURE,
    MERGE_MESSAGE,
    MESSAGE_TYPES,
    PRUNE_MESSAGE,
    REVOKE_MESSAGE,
    HubEventKeys,
    scan_hub_event,
)
from weir.codecs.protowire import VARINT, WireError, iter_fields, read_varint
from weir.config import FarcasterSettings
from weir.events import Chunk, DeadLetter, Event
from weir.redact import redact_url
from weir.supervision import Backoff, CircuitBreaker

log = logging.getLogger("weir.actors.farcaster")

SOURCE = "farcaster"
_MESSAGE_EVENTS = frozenset({MERGE_MESSAGE, PRUNE_MESSAGE, REVOKE_MESSAGE, MERGE_FAILURE})


class IdleStream(Exception):
    """The stream stayed open but delivered nothing for longer than the idle timeout."""


class StreamEnded(Exception):
    """The node ended the Subscribe stream (a live stream never ends on its own)."""


@attrs.frozen(kw_only=True)
class GrpcTarget:
    """Where a Snapchain node listens; ``https`` selects TLS, ``http`` plaintext."""

    host: str
    port: int
    tls: bool

    @classmethod
    def from_url(cls, url: str) -> GrpcTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http://host:port or https://host:port, got {redact_url(url)!r}")
        tls = parts.scheme == "https"
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid port in {redact_url(url)!r}: {exc}") from None
        if port == 0:
            raise ValueError(f"port 0 in {redact_url(url)!r}: a node listens on a real port")
        return cls(host=parts.hostname, port=port if port is not None else (443 if tls else 3383), tls=tls)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def _open_channel(target: GrpcTarget):  # runs in asyncio
    from grpclib.client import Channel

    from weir.codecs.grpc_raw import RawBytesCodec

    context = None
    if target.tls:
        context = ssl.create_default_context()
        context.set_alpn_protocols(["h2"])
    return Channel(target.host, target.port, ssl=context, codec=RawBytesCodec())


async def _get_info_aio(target: GrpcTarget, timeout: float):
    from weir.protos.snapchain import GetInfoRequest, HubServiceStub

    channel = _open_channel(target)
    try:
        return await HubServiceStub(channel).get_info(GetInfoRequest(), timeout=timeout)
    finally:
        channel.close()


async def discover_shards(target: GrpcTarget, *, timeout: float = 10.0) -> list[int]:
    """Ask the node (GetInfo) which user shards exist: 1..num_shards (shard 0 holds no user data)."""
    info = await call_asyncio(_get_info_aio, target, timeout)
    if info.num_shards:
        return list(range(1, info.num_shards + 1))
    return sorted(s.shard_id for s in info.shard_infos if s.shard_id > 0)


async def _subscribe_aio(target: GrpcTarget, request_bytes: bytes, deliver, read_batch: int, connect_timeout: float) -> None:
    """Open Subscribe and pump raw HubEvent bytes to trio in lists (asyncio side)."""
    channel = _open_channel(target)
    try:
        await _subscribe_on(channel, request_bytes, deliver, read_batch, connect_timeout)
    except AttributeError as exc:
        # grpclib 0.4.9: a connection reset while the stream is being opened deletes the
        # connection's transport before it is used ("'Connection' object has no attribute
        # '_transport'"). That is a network fault, to reconnect from, not a bug to crash on.
        if "_transport" not in str(exc):
            raise
        raise ConnectionResetError(f"connection lost while opening the stream ({exc})") from exc
    finally:
        channel.close()


async def _subscribe_on(channel, request_bytes: bytes, deliver, read_batch: int, connect_timeout: float) -> None:
    import asyncio

    from grpclib.const import Cardinality

    async with channel.request("/HubService/Subscribe", Cardinality.UNARY_STREAM, bytes, bytes) as stream:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel (gh-86296).
        async with asyncio.timeout(connect_timeout):
            await stream.send_message(request_bytes, end=True)
        await pump_batches(message_lists(stream, max_messages=read_batch), deliver, max_batch=read_batch, lists=True)
        # The status only arrives with the trailers: without this an error status (a node
        # dropping us with UNAVAILABLE) would look like a normal end of stream.
        await stream.recv_trailing_metadata()


def subscribe_request(shard: int, from_id: int | None, event_types: list[int]) -> bytes:
    """Encode SubscribeRequest{event_types=1, from_id=2, shard_index=4} (hand-encoded: tiny)."""
    from weir.codecs.protowire import varint_field

    out = b"".join(varint_field(1, t) for t in event_types)
    if from_id is not None:
        out += varint_field(2, from_id)  # proto3 optional: present even when 0
    return out + varint_field(4, shard)


def recover_type_and_id(payload: bytes) -> tuple[int, int | None]:
    """Best effort: (type, id) of a HubEvent whose body is malformed, read before the damage.

    The type is 0 and the id None when they cannot be read.
    """
    event_type, event_id = 0, None
    try:
        for field, wire_type, start, _end in iter_fields(payload):
            if field == 1 and wire_type == VARINT:
                event_type = read_varint(payload, start)[0]
            elif field == 2 and wire_type == VARINT:
                event_id = read_varint(payload, start)[0]
    except WireError:
        pass
    return event_type, event_id


@attrs.define(eq=False)
class ShardStats:
    """Live counters of one shard's connection (read by the CLI's progress line and metrics)."""

    connected: bool = False
    connects: int = 0
    reconnects: int = 0
    received: int = 0
    filtered: int = 0  # dropped by the key filter, before any Event was built
    dead_letters: int = 0
    duplicates_skipped: int = 0
    gaps: int = 0
    missed_events: int = 0
    last_id: int | None = None
    last_error: str | None = None


@attrs.define(eq=False)
class ShardReader:
    """Turns one shard's raw HubEvent bytes into chunks; keeps the resume position (no I/O)."""

    shard: int
    partition: str
    detector: GapDetector
    stats: ShardStats
    last_id: int | None = None
    # The user's filter, on scanned keys: events it rejects still move the cursor (``through``) but
    # never become Event objects, which is most of what filtering would otherwise cost.
    keep: Callable[[HubEventKeys], bool] | None = None
    # Dead letters read before any id is known: they wait for the first chunk that has a position,
    # because a chunk must carry a cursor and inventing one (0) would mean "replay everything".
    _unplaced: list[DeadLetter] = attrs.Factory(list)

    def read(self, payloads: list[bytes], received: float) -> Chunk | None:
        events: list[Event] = []
        dead: list[DeadLetter] = self._unplaced
        self._unplaced = []
        last_id = self.last_id
        keep = self.keep
        filtered = 0
        for payload in payloads:
            try:
                keys = scan_hub_event(payload)
            except WireError as exc:
                event_type, position = recover_type_and_id(payload)
                if position is not None and last_id is not None and position <= last_id:
                    continue
                dead.append(self._dead(payload, f"malformed HubEvent: {exc}", position, received))
                if position is not None:
                    last_id = position
                    # It was received (and kept, as a dead letter): the block's counts include it.
                    for gap in self.detector.observe(_bare_keys(event_type, position)):
                        self._report(gap)
                continue
            event_id = keys.event_id
            if last_id is not None and event_id <= last_id:
                self.stats.duplicates_skipped += 1  # a node replaying what we already have
                continue
            last_id = event_id
            for gap in self.detector.observe(keys):
                self._report(gap)
            if keys.event_type in _MESSAGE_EVENTS and not keys.msg_hash:
                dead.append(self._dead(payload, f"{HUB_EVENT_TYPES[keys.event_type]} event carries no message", event_id, received))
                continue
            if keys.shard and keys.shard != self.shard:
                dead.append(self._dead(payload, f"event for shard {keys.shard} on shard {self.shard}'s stream", event_id, received))
                continue
            if keep is not None and not keep(keys):
                filtered += 1
                continue
            fields: dict[str, object] = {"block": keys.block_number}
            if keys.fid:
                fields["fid"] = keys.fid
            if keys.msg_type:
                fields["type"] = MESSAGE_TYPES.get(keys.msg_type, str(keys.msg_type))
            events.append(
                Event(
                    source=SOURCE,
                    partition=self.partition,
                    position=event_id,
                    kind=HUB_EVENT_TYPES.get(keys.event_type, str(keys.event_type)),
                    key=keys.msg_hash,
                    payload=payload,
                    timestamp=float(keys.timestamp + FARCASTER_EPOCH_UNIX) if keys.timestamp else 0.0,
                    received=received,
                    fields=fields,
                )
            )
        self.stats.received += len(payloads)
        self.stats.filtered += filtered
        if last_id is None:
            self._unplaced = dead
            return None
        self.last_id = last_id
        self.stats.last_id = last_id
        return Chunk(partition=self.partition, events=events, through=last_id, dead=dead)

    def _dead(self, payload: bytes, reason: str, position: int | None, received: float) -> DeadLetter:
        self.stats.dead_letters += 1
        log.warning("shard %d: dead letter at event %s: %s", self.shard, position, reason,
                    extra={"event": "dead_letter", "source": SOURCE, "partition": self.partition,
                           "position": position, "reason": reason})
        return DeadLetter(source=SOURCE, partition=self.partition, payload=payload, reason=reason, position=position, received=received)

    def _report(self, gap: Gap) -> None:
        self.stats.gaps += 1
        if gap.missing > 0:
            self.stats.missed_events += gap.missing
        log.warning("shard %d: gap (%s): %s", self.shard, gap.kind, gap.detail,
                    extra={"event": "gap", "source": SOURCE, "partition": self.partition, "kind": gap.kind,
                           "missing": gap.missing, "detail": gap.detail, "last_id": self.last_id})


def _bare_keys(event_type: int, event_id: int) -> HubEventKeys:
    return HubEventKeys(event_type, event_id, 0, event_id >> 14, 0, 0, 0, b"", None)


def server_event_types(settings: FarcasterSettings) -> list[int]:
    """The SubscribeRequest.event_types: the wanted types plus BLOCK_CONFIRMED (for gap checks).

    The node sends only the listed types and nothing at all for an empty list, so "every type"
    is spelled out.
    """
    if not settings.event_types:
        return sorted(t for t in HUB_EVENT_TYPES if t != 0)
    wanted = {HUB_EVENT_TYPE_BY_NAME[name.upper()] for name in settings.event_types}
    return sorted(wanted | {BLOCK_CONFIRMED})


_TRANSIENT_GRPC = {"UNAVAILABLE", "INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "CANCELLED"}


def is_transient(exc: BaseException) -> bool:
    """Network faults a reconnect cures; anything else is a crash for the supervisor."""
    from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

    if isinstance(exc, BaseExceptionGroup):
        return all(is_transient(inner) for inner in exc.exceptions)
    if isinstance(exc, GRPCError):
        return exc.status.name in _TRANSIENT_GRPC
    import asyncio

    import h2.exceptions

    return isinstance(
        exc,
        (IdleStream, StreamEnded, StreamTerminatedError, ProtocolError, ConnectionError, OSError,
         asyncio.TimeoutError, TimeoutError, h2.exceptions.ProtocolError, trio.BrokenResourceError),
    )


async def run_shard_connection(
    stopping: trio.Event,
    *,
    settings: FarcasterSettings,
    shard: int,
    read_cursor: Callable[[], Awaitable[int | None]],
    send: trio.MemorySendChannel[Chunk],
    stats: ShardStats,
    backoff: Backoff,
    breaker: CircuitBreaker | None = None,
    keep: Callable[[HubEventKeys], bool] | None = None,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Stream one shard into ``send`` until ``stopping`` is set.

    Stopping interrupts the stream at once: what was received but not yet sent is dropped, which is
    safe because the cursor only ever covers chunks that were handed on (the next start replays).

    Ready (``task_status.started``) at once: reading the persisted cursor and connecting happen
    after, so a Redis or a node that is down at start-up does not block the supervisor (the stats
    say "not connected").

    ``breaker`` guards the node (shared by all its shards): a connection that fails before
    delivering anything counts as a failure, the first data as a success; while it is open no
    shard tries to connect.
    """
    target = GrpcTarget.from_url(settings.url)
    rng = rng or random.Random()
    event_types = server_event_types(settings)
    task_status.started()
    async with until_stopped(stopping):
        reader = ShardReader(
            shard=shard,
            partition=str(shard),
            detector=GapDetector(subscribed=event_types),
            stats=stats,
            last_id=await read_cursor(),  # may wait for Redis; a stop request still ends it
            keep=keep,
        )

        async def session() -> None:
            from_id = _resume_from(reader.last_id, settings.start)
            reader.detector.subscribed_from(from_id)
            request = subscribe_request(shard, from_id, event_types)
            await _stream_once(target, request, reader, send, settings, stats, breaker, log_from=from_id)

        async def on_lost(exc: BaseException, delay: float) -> None:
            stats.last_error = _describe(exc)
            resume_from = _resume_from(reader.last_id, settings.start)
            log.warning("shard %d: stream from %s lost (%s); reconnecting in %.2fs from event %s",
                        shard, target, stats.last_error, delay, resume_from,
                        extra={"event": "disconnect", "source": SOURCE, "partition": str(shard),
                               "url": str(target), "error": stats.last_error, "reconnect_in": round(delay, 3),
                               "resume_from": resume_from, "reconnects": stats.reconnects})

        await reconnect_forever(
            session, progress=lambda: stats.received, is_transient=is_transient, on_lost=on_lost,
            stats=stats, backoff=backoff, rng=rng, breaker=breaker,
        )
    stats.connected = False


def _resume_from(last_id: int | None, start: str) -> int | None:
    if last_id is not None:
        return last_id + 1
    if start == "live":
        return None
    if start == "oldest":
        return 0
    return int(start)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _describe(exc.exceptions[0])
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _stream_once(
    target: GrpcTarget,
    request: bytes,
    reader: ShardReader,
    send: trio.MemorySendChannel[Chunk],
    settings: FarcasterSettings,
    stats: ShardStats,
    breaker: CircuitBreaker | None,
    *,
    log_from: int | None,
) -> None:
    raw_send, raw_receive = trio.open_memory_channel[list[bytes]](1)

    async def pump() -> None:
        try:
            await call_asyncio(_subscribe_aio, target, request, trio_sender(raw_send), settings.read_batch, settings.connect_timeout)
        finally:
            # close() has no checkpoint: the pump's own error (say a GRPCError status) is what
            # leaves this task, not a Cancelled raised while closing.
            raw_send.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        stats.connects += 1
        log.info("shard %d: subscribing to %s from %s", reader.shard, target, "live" if log_from is None else f"event {log_from}",
                 extra={"event": "connect", "source": SOURCE, "partition": reader.partition, "url": str(target),
                        "from_id": log_from, "connects": stats.connects})
        async with raw_receive:
            while True:
                payloads: list[bytes] | None = None
                with trio.move_on_after(settings.idle_timeout) as idle:
                    try:
                        payloads = await raw_receive.receive()
                    except trio.EndOfChannel:
                        break  # the nursery joins the pump: its error, if any, propagates
                if idle.cancelled_caught:
                    raise IdleStream(f"no data for {settings.idle_timeout:g}s")
                assert payloads is not None
                if not stats.connected:
                    stats.connected = True
                    stats.last_error = None
                    if breaker is not None:
                        breaker.record_success()
                handed_on = reader.last_id
                chunk = reader.read(payloads, trio.current_time())
                if chunk is not None:
                    try:
                        await send.send(chunk)
                    except BaseException:
                        # Not handed on (the stream failed, or we are stopping, while the pipeline
                        # was full): the next session must read these events again, so the resume
                        # point goes back to what was handed on. Without this a reconnect resumed
                        # after events that never reached the pipeline: they were lost.
                        reader.last_id = handed_on
                        raise
    raise StreamEnded("the node ended the stream")
