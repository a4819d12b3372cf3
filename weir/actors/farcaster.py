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
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from typing import ClassVar, NoReturn
from urllib.parse import urlsplit

import attrs
import trio

from weir.actors.grpc_bulk import message_lists
from weir.actors.reconnect import reconnect_forever
from weir.actors.stopping import until_stopped
from weir.actors.verify_workers import ProcessVerifier, open_process_verifier
from weir.bridge import call_asyncio, pump_batches, trio_sender
from weir.codecs.farcaster_gaps import Gap, GapDetector, split_event_id
from weir.codecs.farcaster_info import NodeInfo, parse_get_info
from weir.codecs.farcaster_positions import ACCEPT, HOLD, REFUSE, REPLAY, PositionJudge, PositionVerdict
from weir.codecs.farcaster_validity import hub_event_invalidity
from weir.codecs.grpc_frames import KEEP_BYTES, MAX_MESSAGE, SkippedMessage
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
from weir.events import Chunk, DeadLetter, Event, event_of
from weir.observability.progress import ProgressSample
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
    from weir.actors.grpc_channel import CoalescingChannel
    from weir.codecs.grpc_raw import RawBytesCodec

    context = None
    if target.tls:
        context = ssl.create_default_context()
        context.set_alpn_protocols(["h2"])
    return CoalescingChannel(target.host, target.port, ssl=context, codec=RawBytesCodec())


@contextmanager
def _grpclib_reset_is_a_network_fault() -> Iterator[None]:
    """grpclib 0.4.9: a connection reset while a call is being opened deletes the connection's
    transport before it is used, and using or closing the channel then raises AttributeError
    ("'Connection' object has no attribute '_transport'"). That is a network fault, to reconnect
    from, not a bug to crash on."""
    try:
        yield
    except AttributeError as exc:
        if "_transport" not in str(exc):
            raise
        raise ConnectionResetError(f"connection lost while opening the call ({exc})") from exc


def load_transport() -> None:
    """Import the gRPC stack and run GetInfo's message code once, before any pipeline runs.

    Done lazily by the first connection, it took ~120 ms of CPU (grpclib, h2, betterproto2, and
    pydantic, which betterproto2 imports on first use when installed) in one asyncio callback:
    every partition's pipeline stalled while live events queued (docs/performance.md, session 9).
    GetInfo's reply is now read without betterproto2 (weir/codecs/farcaster_info.py).
    """
    from grpclib.const import Cardinality  # noqa: F401

    from weir.actors.grpc_channel import CoalescingChannel  # noqa: F401
    from weir.codecs.grpc_raw import RawBytesCodec  # noqa: F401


async def _get_info_aio(target: GrpcTarget, timeout: float) -> NodeInfo:
    from grpclib.const import Cardinality

    with _grpclib_reset_is_a_network_fault():  # around close() too: it meets the same missing transport
        channel = _open_channel(target)
        try:
            async with channel.request("/HubService/GetInfo", Cardinality.UNARY_UNARY, bytes, bytes,
                                       timeout=timeout) as stream:
                await stream.send_message(b"", end=True)  # GetInfoRequest has no fields
                reply = await stream.recv_message()
            if reply is None:
                raise WireError("GetInfo ended without a reply")
            return parse_get_info(reply)
        finally:
            channel.close()


async def announced_height(target: GrpcTarget, shard: int, *, timeout: float) -> int | None:
    """The block height the node announces for ``shard`` (GetInfo's ShardInfo.max_height), if any."""
    info = await call_asyncio(_get_info_aio, target, timeout)
    return info.height_of(shard)


async def discover_shards(target: GrpcTarget, *, timeout: float = 10.0) -> list[int]:
    """Ask the node (GetInfo) which user shards exist: 1..num_shards (shard 0 holds no user data)."""
    info = await call_asyncio(_get_info_aio, target, timeout)
    if info.num_shards:
        return list(range(1, info.num_shards + 1))
    return sorted(shard_id for shard_id, _ in info.shard_infos if shard_id > 0)


async def _subscribe_aio(target: GrpcTarget, request_bytes: bytes, deliver, settings: FarcasterSettings) -> None:
    """Open Subscribe and pump raw HubEvent bytes to trio in lists (asyncio side)."""
    with _grpclib_reset_is_a_network_fault():  # around close() too: it meets the same missing transport
        channel = _open_channel(target)
        try:
            await _subscribe_on(channel, request_bytes, deliver, settings)
        finally:
            channel.close()


async def _subscribe_on(channel, request_bytes: bytes, deliver, settings: FarcasterSettings) -> None:
    import asyncio

    from grpclib.const import Cardinality

    async with channel.request("/HubService/Subscribe", Cardinality.UNARY_STREAM, bytes, bytes) as stream:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel (gh-86296).
        async with asyncio.timeout(settings.connect_timeout):
            await stream.send_message(request_bytes, end=True)
        # A message over weir's limit is skipped by the reader (never held whole), not refused: it
        # reaches ShardReader as a SkippedMessage, to be dead-lettered there.
        messages = message_lists(stream, max_messages=settings.read_batch, max_message_bytes=settings.max_message_bytes,
                                 keep_bytes=settings.dead_letter_bytes)
        await pump_batches(messages, deliver, max_batch=settings.read_batch, lists=True)
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
    implausible_positions: int = 0  # ids dead-lettered without moving the cursor
    oversized: int = 0  # HubEvents over farcaster.max_message_bytes, dead-lettered
    invalid_messages: int = 0  # messages whose hash or signature did not verify, dead-lettered
    verified_in_workers: int = 0  # messages verified in worker processes (farcaster.verify_workers)
    refusals: int = 0  # times the node was disconnected for sending implausible ids
    refused: str | None = None  # why the node was last refused; None once it sent a plausible id
    last_id: int | None = None
    last_error: str | None = None
    head: int | None = None  # the shard's height known (GetInfo's max_height, or the highest block accepted)

    def saw_height(self, height: int | None) -> None:
        """The shard's height as told (GetInfo) or seen (an accepted block): the head only moves up."""
        if height and (self.head is None or height > self.head):
            self.head = height

    progress_unit: ClassVar[str] = "block"  # what the progress positions count

    def progress_sample(self, at: float, wall: float) -> ProgressSample:
        """Blocks: the block of the last id against the height (event times are not the head's)."""
        position = None if self.last_id is None else split_event_id(self.last_id)[0]
        return ProgressSample(at=at, position=position, head=self.head)


class NodeRefused(Exception):
    """The node kept sending implausible event ids: drop the connection (and reconnect later)."""


def _default_judge(reader: ShardReader) -> PositionJudge:
    defaults = FarcasterSettings()
    return PositionJudge(shard=reader.shard, max_block_jump=defaults.max_block_jump, max_bad_in_row=defaults.max_bad_positions)


@attrs.define(eq=False)
class ShardReader:
    """Turns one shard's raw HubEvent bytes into chunks; keeps the resume position (no I/O).

    Nothing the node sends moves ``last_id`` (the resume point, then the cursor) before ``judge``
    found its id plausible; a message over ``max_message_bytes`` and, with ``verify``, a message
    whose hash or signature fails are dead-lettered (their first ``dead_letter_bytes`` kept for
    the oversized), and the stream goes on.
    """

    shard: int
    partition: str
    detector: GapDetector
    stats: ShardStats
    last_id: int | None = None
    # The user's filter, on scanned keys: events it rejects still move the cursor (``through``) but
    # never become Event objects, which is most of what filtering would otherwise cost.
    keep: Callable[[HubEventKeys], bool] | None = None
    judge: PositionJudge = attrs.Factory(_default_judge, takes_self=True)
    verify: bool = True
    max_message_bytes: int = MAX_MESSAGE
    dead_letter_bytes: int = KEEP_BYTES
    # Set when the judge says the node is to be refused: the actor hands on the chunk, then drops it.
    refusal: str | None = None
    # What a read left when an id was too far past the known height (read(may_hold=True)).
    held: list[bytes | SkippedMessage] | None = None
    # Dead letters read before any id is known: they wait for the first chunk that has a position,
    # because a chunk must carry a cursor and inventing one (0) would mean "replay everything".
    _unplaced: list[DeadLetter] = attrs.Factory(list)
    # With defer_verify, read() puts events in their chunk unverified and lists them here with their
    # keys; settle() then takes the verdicts (computed elsewhere, e.g. in worker processes) and
    # turns the invalid ones into dead letters. A chunk must not be handed on before settle().
    defer_verify: bool = False
    unverified: list[tuple[Event, HubEventKeys]] = attrs.Factory(list)

    def rewind(self, last_id: int | None) -> None:
        """Forget what was read after ``last_id`` (it was not handed on): the next session resumes
        there, and nothing read since waits for verification."""
        self.last_id = last_id
        self.unverified.clear()

    def settle(self, chunk: Chunk | None, verdicts: list[str | None]) -> Chunk | None:
        """``chunk`` with the events ``unverified`` listed taken out where ``verdicts`` (one per
        listed event, in order: ``hub_event_invalidity``) give a reason, each dead-lettered with it
        at its position, as read() does when it verifies inline."""
        pending, self.unverified = self.unverified, []
        if len(verdicts) != len(pending):
            raise ValueError(f"{len(verdicts)} verdicts for {len(pending)} unverified events")
        invalid = {id(event): reason for (event, _), reason in zip(pending, verdicts) if reason is not None}
        if not invalid or chunk is None:
            return chunk
        events: list[Event] = []
        dead = list(chunk.dead)
        for event in chunk.events:
            reason = invalid.get(id(event))
            if reason is None:
                events.append(event)
            else:
                self.stats.invalid_messages += 1
                dead.append(self._dead(event.payload, reason, event.position, event.received))
        return attrs.evolve(chunk, events=events, dead=dead)

    def read(self, payloads: list[bytes | SkippedMessage], received: float, *, may_hold: bool = False) -> Chunk | None:
        """The chunk of ``payloads`` (None while no id is known yet).

        With ``may_hold``, reading stops at the first id that is consistent but too far past the
        known height: the rest is left in ``held``, for the actor to read again once it asked the
        node's height (GetInfo).
        """
        events: list[Event] = []
        dead: list[DeadLetter] = self._unplaced
        self._unplaced = []
        last_id = self.last_id
        keep = self.keep
        judge = self.judge.judge
        verify = self.verify
        defer = self.defer_verify
        limit = self.max_message_bytes
        partition = self.partition
        observe = self.detector.observe
        # The next events of the block in progress (the common case) are judged and counted inline;
        # ``steady`` is that block while the judge and gap detector say nothing else can happen.
        judge_shard = self.judge.shard
        steady = self.judge.steady_block(last_id)
        counts = self.detector.open_counts(steady)
        if counts is None:
            steady = None
        filtered = 0
        accepted = 0
        consumed = len(payloads)
        for index, payload in enumerate(payloads):
            if type(payload) is not bytes or len(payload) > limit:
                steady = None  # judged and observed the long way: decide the next one so too
                before, last_id = last_id, self._skipped(payload, last_id, dead, received)
                accepted += last_id != before
                continue
            try:
                keys = scan_hub_event(payload)
            except WireError as exc:
                steady = None
                event_type, position = recover_type_and_id(payload)
                reason = f"malformed HubEvent: {exc}"
                if position is None:
                    dead.append(self._dead(payload, reason, None, received))
                    continue
                verdict = judge(position, last_id=last_id, event_type=event_type or None)
                if verdict.action == REPLAY:
                    continue
                if verdict.action != ACCEPT:
                    self._implausible(payload, f"{reason}; {verdict.reason}", verdict, dead, received)
                    continue
                dead.append(self._dead(payload, reason, position, received))
                last_id = position
                accepted += 1
                # It was received (and kept, as a dead letter): the block's counts include it.
                for gap in observe(_bare_keys(event_type, position)):
                    self._report(gap)
                continue
            event_type, event_id, shard, block_number, timestamp, fid, msg_type, msg_hash, block = keys
            if (
                event_id >> 14 == steady
                and event_id > last_id  # type: ignore[operator]  # steady implies a last id
                and event_type != BLOCK_CONFIRMED
                and (not block_number or block_number == steady)
                and (not shard or shard == judge_shard)
            ):
                counts[event_type] = counts.get(event_type, 0) + 1  # type: ignore[index]
            else:
                steady = None
                verdict = judge(event_id, last_id=last_id, event_type=event_type, block_field=block_number,
                                shard_field=shard, confirmed_block=block.block_number if block else None,
                                may_hold=may_hold)
                if verdict.action != ACCEPT:
                    if verdict.action == HOLD:
                        self.held = payloads[index:]
                        consumed = index
                        break
                    if verdict.action == REPLAY:
                        self.stats.duplicates_skipped += 1  # a node replaying what we already have
                    else:
                        self._implausible(payload, verdict.reason, verdict, dead, received)
                    continue
                for gap in observe(keys):
                    self._report(gap)
                steady = self.judge.steady_block(event_id)
                counts = self.detector.open_counts(steady)
                if counts is None:
                    steady = None
            last_id = event_id
            accepted += 1
            if event_type in _MESSAGE_EVENTS and not msg_hash:
                dead.append(self._dead(payload, f"{HUB_EVENT_TYPES[event_type]} event carries no message", event_id, received))
                continue
            if keep is not None and not keep(keys):
                filtered += 1
                continue
            if verify and not defer:  # only what passed the filter: the filtered-out path pays nothing
                invalid = hub_event_invalidity(payload, keys)
                if invalid is not None:
                    self.stats.invalid_messages += 1
                    dead.append(self._dead(payload, invalid, event_id, received))
                    continue
            fields: dict[str, object]
            if fid and msg_type:  # a message's event: one dict display, not three insertions
                fields = {"block": block_number, "fid": fid, "type": MESSAGE_TYPES.get(msg_type) or str(msg_type)}
            else:
                fields = {"block": block_number}
                if fid:
                    fields["fid"] = fid
                if msg_type:
                    fields["type"] = MESSAGE_TYPES.get(msg_type) or str(msg_type)
            event = event_of(
                SOURCE,
                partition,
                event_id,
                0,  # sub
                HUB_EVENT_TYPES.get(event_type) or str(event_type),
                msg_hash,  # key
                payload,
                float(timestamp + FARCASTER_EPOCH_UNIX) if timestamp else 0.0,
                received,
                fields,
            )
            events.append(event)
            if verify and defer:
                self.unverified.append((event, keys))
        self.stats.received += consumed
        self.stats.filtered += filtered
        if accepted:
            self.stats.refused = None
        if last_id is None:
            self._unplaced = dead
            return None
        self.last_id = last_id
        self.stats.last_id = last_id
        self.stats.saw_height(self.judge.height)
        return Chunk(partition=self.partition, events=events, through=last_id, dead=dead)

    def _skipped(self, item: bytes | SkippedMessage, last_id: int | None, dead: list[DeadLetter], received: float) -> int | None:
        """Dead-letter a message too big to take (or unreadable as sent); return the new last id.

        Its id is read from its first bytes where it can be, and moves the cursor past it only
        when it is plausible.
        """
        if isinstance(item, SkippedMessage):
            size, head, why = item.size, item.head[: self.dead_letter_bytes], item.why
        else:
            size, head, why = len(item), item[: self.dead_letter_bytes], f"above the {self.max_message_bytes}-byte limit"
        self.stats.oversized += 1
        reason = f"HubEvent of {size} bytes, {why} (farcaster.max_message_bytes); its first {len(head)} bytes kept"
        event_type, position = recover_type_and_id(head)
        if position is None:
            dead.append(self._dead(head, f"{reason}; its id could not be read from them", None, received))
            return last_id
        verdict = self.judge.judge(position, last_id=last_id, event_type=event_type or None)
        if verdict.action == REPLAY:
            return last_id
        if verdict.action != ACCEPT:
            self._implausible(head, f"{reason}; {verdict.reason}", verdict, dead, received)
            return last_id
        dead.append(self._dead(head, reason, position, received))
        for gap in self.detector.observe(_bare_keys(event_type, position)):
            self._report(gap)
        return position

    def _implausible(self, payload: bytes, reason: str, verdict: PositionVerdict, dead: list[DeadLetter], received: float) -> None:
        """Dead-letter an item whose id is not believed: without a position, so the cursor stays."""
        self.stats.implausible_positions += 1
        dead.append(self._dead(payload, reason, None, received))
        if verdict.action == REFUSE and self.refusal is None:
            self.refusal = verdict.reason

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
        (IdleStream, StreamEnded, NodeRefused, StreamTerminatedError, ProtocolError, ConnectionError, OSError,
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
            judge=PositionJudge(shard=shard, max_block_jump=settings.max_block_jump,
                                max_bad_in_row=settings.max_bad_positions),
            verify=settings.verify,
            max_message_bytes=settings.max_message_bytes,
            dead_letter_bytes=settings.dead_letter_bytes,
            defer_verify=settings.verify and settings.verify_workers > 0,
        )
        verifier: ProcessVerifier | None = None

        async def session() -> None:
            # The node's own height bounds the ids it may send (weir.codecs.farcaster_positions).
            reader.judge.announce_height(await announced_height(target, shard, timeout=settings.connect_timeout))
            stats.saw_height(reader.judge.height)
            reader.judge.bad_in_row = 0
            reader.refusal = None
            from_id = _resume_from(reader.last_id, settings.start)
            reader.detector.subscribed_from(from_id)
            request = subscribe_request(shard, from_id, event_types)
            await _stream_once(target, request, reader, send, settings, stats, breaker, log_from=from_id,
                               verifier=verifier)

        async def on_lost(exc: BaseException, delay: float, opened: bool) -> None:
            stats.last_error = _describe(exc)
            resume_from = _resume_from(reader.last_id, settings.start)
            log.warning("shard %d: stream from %s %s (%s); reconnecting in %.2fs from event %s",
                        shard, target, "lost" if opened else "did not open", stats.last_error, delay, resume_from,
                        extra={"event": "disconnect", "source": SOURCE, "partition": str(shard), "url": str(target),
                               "opened": opened, "error": stats.last_error, "reconnect_in": round(delay, 3),
                               "resume_from": resume_from, "reconnects": stats.reconnects})

        async with AsyncExitStack() as stack:
            if reader.defer_verify:
                verifier = await stack.enter_async_context(open_process_verifier(settings.verify_workers))
            await reconnect_forever(
                # Implausible ids are no progress: a node that sends only those is backed off from.
                session, progress=lambda: stats.received - stats.implausible_positions, is_transient=is_transient,
                on_lost=on_lost, stats=stats, backoff=backoff, rng=rng, breaker=breaker,
                peer=f"shard {shard}'s node {target}",
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
    verifier: ProcessVerifier | None = None,
) -> None:
    raw_send, raw_receive = trio.open_memory_channel[list[bytes]](1)

    async def pump() -> None:
        try:
            await call_asyncio(_subscribe_aio, target, request, trio_sender(raw_send), settings)
        finally:
            # close() has no checkpoint: the pump's own error (say a GRPCError status) is what
            # leaves this task, not a Cancelled raised while closing.
            raw_send.close()

    refreshing = trio.CancelScope()

    async def refresh_height() -> None:
        # While weir catches up the node's height moves on: asked again now and then, for progress
        # only (the judge keeps what it learns at connect and when an id is far ahead).
        with refreshing:
            while True:
                await trio.sleep(settings.head_refresh)
                try:
                    stats.saw_height(await announced_height(target, reader.shard, timeout=settings.connect_timeout))
                except Exception as exc:  # a GetInfo that fails says nothing about the stream
                    log.debug("shard %d: GetInfo for the height failed: %s", reader.shard, _describe(exc))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        nursery.start_soon(refresh_height)
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
                chunk = reader.read(payloads, trio.current_time(), may_hold=True)
                if reader.held is not None:
                    # An id past the height known: the node may have moved on (it skips a lagging
                    # subscriber forward). Ask it, then judge what is left once more, for good.
                    rest, reader.held = reader.held, None
                    try:
                        height = await announced_height(target, reader.shard, timeout=settings.connect_timeout)
                    except BaseException:
                        reader.rewind(handed_on)  # nothing of this read was handed on
                        raise
                    reader.judge.announce_height(height)
                    more = reader.read(rest, trio.current_time())
                    if chunk is None:
                        chunk = more
                    elif more is not None:
                        chunk = attrs.evolve(more, events=chunk.events + more.events, dead=chunk.dead + more.dead)
                if reader.unverified:
                    assert verifier is not None  # only a reader with defer_verify lists events
                    try:
                        verdicts = await verifier.verdicts(
                            [(event.payload, keys.fid, keys.msg_type, keys.msg_hash) for event, keys in reader.unverified])
                    except BaseException:
                        reader.rewind(handed_on)  # nothing of this read was handed on
                        raise
                    chunk = reader.settle(chunk, verdicts)
                    stats.verified_in_workers = verifier.offloaded
                if chunk is not None:
                    try:
                        await send.send(chunk)
                    except BaseException:
                        # Not handed on (the stream failed, or we are stopping, while the pipeline
                        # was full): the next session must read these events again, so the resume
                        # point goes back to what was handed on. Without this a reconnect resumed
                        # after events that never reached the pipeline: they were lost.
                        reader.rewind(handed_on)
                        raise
                if reader.refusal is not None:
                    _refuse(reader, target)
        refreshing.cancel()  # the stream ended: the nursery joins the pump alone
    raise StreamEnded("the node ended the stream")


def _refuse(reader: ShardReader, target: GrpcTarget) -> NoReturn:
    """Drop a node that keeps sending implausible ids: reported, then reconnected with backoff."""
    stats = reader.stats
    stats.refusals += 1
    stats.refused = reader.refusal
    log.error("shard %d: refusing %s: %s", reader.shard, target, reader.refusal,
              extra={"event": "node_refused", "source": SOURCE, "partition": reader.partition, "url": str(target),
                     "reason": reader.refusal, "refusals": stats.refusals, "last_id": reader.last_id})
    raise NodeRefused(f"the node kept sending implausible event ids: {reader.refusal}")
