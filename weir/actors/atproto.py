"""AT Protocol connection actor: a relay's firehose (or a Jetstream server) -> chunks of events.

One WebSocket (trio-websocket) per partition. Messages are read a list at a time (whatever is
queued, up to ``read_batch``), turned into events by a sans-IO reader (:class:`FirehoseReader` or
:class:`JetstreamReader`) and sent down the pipeline as one :class:`~weir.events.Chunk` per list,
so all ops of one commit (one ``seq``) always travel together.

What one Redis entry holds (docs/atproto.md): one event per commit op, id ``<seq>-<op index>``
(Jetstream: ``<time_us>-0``, or a position above the highest for a late message); ``data`` is the record block's original DAG-CBOR bytes (verified
against its CID), or its JSON form with ``atproto.record_format = "json"``; deletes carry no data.
``#identity`` / ``#account`` / ``#sync`` are events of their own kind (``data`` = the body).

Resume: the firehose's cursor is the last persisted seq; the connection asks for ``cursor=`` it and
skips anything at or below it (the seq is the frame's identity; relays disagree on whether replay
is inclusive). Jetstream's connection asks for ``atproto.jetstream_rewind`` before its highest
position and skips what it already handed on by identity (weir/codecs/atproto_order.py).
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import math
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, NoReturn
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import attrs
import h11
import trio
import trio_websocket

from weir.actors.reconnect import reconnect_forever
from weir.actors.stopping import until_stopped
from weir.actors.ws_upgrade import open_client
from weir.codecs import atproto_cbor as cbor
from weir.codecs.atproto_json import compact_json, json_dag_cbor, record_json
from weir.actors.ws_bounded import OversizedMessage
from weir.codecs.atproto_firehose import (
    HEAD_BYTES,
    KEEP_ALL,
    MAX_BLOCKS_BYTES,
    MAX_OPS,
    FrameError,
    OverLimit,
    RecordFilter,
    decode_frame,
    seq_of_head,
)
from weir.codecs.atproto_jetstream import JetstreamDecoder, JetstreamMessage, dictionary_id, time_us_of_head
from weir.codecs.atproto_order import (
    LATE,
    STALE,
    JetstreamOrder,
    RevTracker,
    commit_identity,
    event_identity,
    identity_of_fields,
)
from weir.codecs.atproto_positions import ACCEPT, REFUSE, REPLAY, PositionVerdict, SeqJudge, TimeJudge
from weir.config import JETSTREAM_ZSTD_DICTIONARY_URL, AtprotoSettings
from weir.events import Chunk, DeadLetter, Event
from weir.files import write_atomically
from weir.observability.progress import ProgressSample
from weir.redact import redact_url
from weir.supervision import Backoff, CircuitBreaker

log = logging.getLogger("weir.actors.atproto")

SOURCE = "atproto"
FIREHOSE_PATH = "/xrpc/com.atproto.sync.subscribeRepos"
JETSTREAM_PATH = "/subscribe"
MAX_RETRY_AFTER = 300.0
MAX_DICTIONARY_BYTES = 10 << 20  # Bluesky's is ~110 KB: a body this large is not a dictionary


class IdleStream(Exception):
    """The connection stayed open but delivered nothing for longer than the idle timeout."""


class RelayError(Exception):
    """The relay sent an error frame (``FutureCursor``, ``ConsumerTooSlow``, …) and closes."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}" if message else name)
        self.name = name


class TooManyBadFrames(Exception):
    """Malformed frames kept arriving in a row: the connection is reopened."""


class RelayRefused(Exception):
    """The relay kept sending implausible positions: the connection is dropped (and reopened later)."""


class DictionaryUnavailable(Exception):
    """The Jetstream zstd dictionary could not be read or fetched (one line naming the setting and where)."""


@attrs.define(eq=False)
class AtprotoStats:
    """Live counters of one AT Protocol connection (read by the CLI's progress line and metrics)."""

    connected: bool = False
    connects: int = 0
    reconnects: int = 0
    received: int = 0  # WebSocket messages
    events: int = 0  # events produced (after the filter)
    filtered: int = 0  # ops / events the filter dropped; a frame dropped by its repo (DID) before its ops are read counts 1
    dead_letters: int = 0
    duplicates_skipped: int = 0  # already handed on, by identity: a seq at or below the last; a known Jetstream event
    reordered: int = 0  # Jetstream events that came after one with a larger time_us: persisted all the same
    stale_revs: int = 0  # commits whose rev was not above the DID's last rev: dropped
    unknown_frames: int = 0
    infos: int = 0
    relay_errors: int = 0
    gaps: int = 0  # firehose seqs have gaps by design; kept for the common stats interface
    implausible_positions: int = 0  # items dead-lettered without moving the cursor (seq, time_us not believed)
    oversized: int = 0  # items over a size limit (frame, ops, blocks), dead-lettered with their first bytes
    refusals: int = 0  # times the relay was disconnected for sending implausible positions in a row
    refused: str | None = None  # why the relay was last refused; None once it sent a plausible position
    last_id: int | None = None
    last_error: str | None = None
    position_time: float | None = None  # the network time of last_id (firehose ``time``, Jetstream time_us), unix s

    progress_unit: ClassVar[str] = "position"  # what the progress positions count

    def progress_sample(self, at: float, wall: float) -> ProgressSample:
        """A relay does not say its newest seq: the lag is the position's time against the wall clock."""
        timed = self.position_time is not None
        return ProgressSample(at=at, position=self.last_id, position_time=self.position_time, head_time=wall if timed else None)


def _timestamp(text: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def _bytes_of(head: bytes | str) -> bytes:
    return head.encode(errors="surrogatepass") if isinstance(head, str) else head


@attrs.define(eq=False)
class _ReaderBase:
    partition: str
    stats: AtprotoStats
    keep: RecordFilter = KEEP_ALL
    record_format: str = "dag-cbor"
    revs: RevTracker = attrs.Factory(RevTracker)
    last_id: int | None = None  # the resume position (seq / time_us)
    consecutive_bad: int = 0
    # The longest run of bad frames since the session last looked: a run inside one read batch,
    # followed by a good frame, must still count (the session checks once per batch).
    longest_bad_run: int = 0
    progress: int = 0  # frames that advanced the position (a connection that made progress)
    relay_error: RelayError | None = None  # set by an error frame: raise after handing on the chunk
    refusal: str | None = None  # set when the judge refuses the relay: raise after handing on the chunk
    dead_letter_bytes: int = 1024  # of an item over a size limit, what its dead letter keeps
    _unplaced: list[DeadLetter] = attrs.Factory(list)

    def resume_from(self) -> int | None:
        """The cursor a (re)connection asks for: the last seq handed on (None: per ``start``)."""
        return self.last_id

    def _accepted(self) -> None:
        """A plausible position came: the relay is no longer reported as refused."""
        self.stats.refused = None

    def _over_limit(self, item: OversizedMessage | bytes, exc: FrameError | None, max_frame: int) -> tuple[bytes, str]:
        """The head a dead letter keeps of an item over a limit, and the reason."""
        if isinstance(item, OversizedMessage):
            head = _bytes_of(item.head)
            what = "frame" if isinstance(self, FirehoseReader) else "message"
            unit = "bytes" if isinstance(item.head, bytes) else "characters"
            reason = f"{what} of {item.size} {unit} exceeds the {max_frame}-byte limit (atproto.max_frame_bytes)"
        else:
            head, reason = item, str(exc)
        self.stats.oversized += 1
        kept = head[: self.dead_letter_bytes]
        return kept, f"{reason}; its first {len(kept)} bytes kept"

    def _implausible(self, payload: bytes, reason: str, verdict: PositionVerdict, dead: list[DeadLetter], received: float) -> None:
        """Dead-letter an item whose position is not believed: without a position, so the cursor stays."""
        self.stats.implausible_positions += 1
        dead.append(self._dead(payload, reason, None, received))
        if verdict.action == REFUSE and self.refusal is None:
            self.refusal = verdict.reason

    def _count_bad(self) -> None:
        self.consecutive_bad += 1
        self.longest_bad_run = max(self.longest_bad_run, self.consecutive_bad)

    def _dead(self, payload: bytes, reason: str, position: int | None, received: float) -> DeadLetter:
        self.stats.dead_letters += 1
        log.warning("%s: dead letter at %s: %s", self.partition, position, reason,
                    extra={"event": "dead_letter", "source": SOURCE, "partition": self.partition,
                           "position": position, "reason": reason})
        return DeadLetter(source=SOURCE, partition=self.partition, payload=payload, reason=reason, position=position, received=received)

    def _stale(self, kind: str, position: int, did: str, rev: str) -> None:
        self.stats.stale_revs += 1
        last = self.revs.last(did)
        log.warning("%s: %s at %d of %s has rev %s, not above the last seen %s: dropped",
                    self.partition, kind, position, did, rev, last,
                    extra={"event": "stale_rev", "source": SOURCE, "partition": self.partition, "position": position,
                           "did": did, "rev": rev, "last_rev": last})

    def _finish(self, events: list[Event], dead: list[DeadLetter], last_id: int | None, count: int) -> Chunk | None:
        self.stats.received += count
        self.stats.events += len(events)
        if last_id is None:
            self._unplaced = dead
            return None
        self.last_id = last_id
        self.stats.last_id = last_id
        return Chunk(partition=self.partition, events=events, through=last_id, dead=dead)


_DEFAULTS = AtprotoSettings()  # built once: a reader per connection need not build the settings again


def _default_seq_judge(reader: FirehoseReader) -> SeqJudge:
    return SeqJudge(max_bad_in_row=_DEFAULTS.max_bad_positions, max_jump=_DEFAULTS.max_seq_jump)


@attrs.define(eq=False)
class FirehoseReader(_ReaderBase):
    """Turns firehose frames into chunks of per-op events; keeps the resume seq (no I/O).

    No seq moves ``last_id`` (the resume point, then the cursor) before ``judge`` found it plausible
    (:mod:`weir.codecs.atproto_positions`); a frame over a size limit is dead-lettered with its first
    bytes, at its seq when that can be read and is plausible.
    """

    max_frame: int = 5_000_000
    max_ops: int = MAX_OPS
    max_blocks: int = MAX_BLOCKS_BYTES
    judge: SeqJudge = attrs.Factory(_default_seq_judge, takes_self=True)

    def read(self, frames: list[bytes | str | OversizedMessage], received: float) -> Chunk | None:
        events: list[Event] = []
        dead, self._unplaced = self._unplaced, []
        last = self.last_id
        last_time = ""  # the accepted frame's time, read once per chunk (for the progress lag)
        keep, max_frame, max_blocks, max_ops = self.keep, self.max_frame, self.max_blocks, self.max_ops
        judge, stats, revs = self.judge, self.stats, self.revs
        # The common cases of judge.judge and revs.advance are taken inline (a call per frame each
        # was ~12 % of a filtered frame); anything else is left to them, which decide as before.
        max_jump = judge.max_jump
        known_revs, rev_capacity, advance_rev = revs.entries(), revs.capacity, revs.advance
        accepted = 0  # frames that advanced the position: self.progress, and stats.refused cleared, after the loop
        filtered = 0  # added to stats.filtered after the loop
        for frame in frames:
            if type(frame) is not bytes:  # rare: tested apart, so a binary frame costs one test
                if isinstance(frame, OversizedMessage):
                    seq = seq_of_head(_bytes_of(frame.head))  # from the whole head the transport kept
                    head, reason = self._over_limit(frame, None, self.max_frame)
                    last = self._bad(head, reason, seq, last, dead, received)
                    continue
                if isinstance(frame, str):
                    last = self._bad(frame.encode(), "text message on the firehose (frames are binary)", None, last, dead, received)
                    continue
            try:
                decoded = decode_frame(frame, keep=keep, max_frame=max_frame, max_blocks=max_blocks, max_ops=max_ops)
            except OverLimit as exc:
                head, reason = self._over_limit(frame, exc, self.max_frame)
                last = self._bad(head, reason, exc.seq, last, dead, received)
                continue
            except FrameError as exc:
                last = self._bad(frame, str(exc), exc.seq, last, dead, received)
                continue
            self.consecutive_bad = 0
            kind = decoded.kind
            seq = decoded.seq
            if seq is None:
                if kind == "info":
                    self.stats.infos += 1
                    name, message = decoded.body["name"], decoded.body["message"]
                    if name == "OutdatedCursor":  # the relay replays from its oldest event: any seq above is its
                        self.judge.relay_skips_ahead()
                    log.warning("%s: relay info %s: %s", self.partition, name, message,
                                extra={"event": "relay_info", "source": SOURCE, "partition": self.partition,
                                       "info": name, "detail": message, "last_id": last})
                elif kind == "error":
                    self.stats.relay_errors += 1
                    self.relay_error = RelayError(decoded.type, decoded.body["message"])
                    log.warning("%s: relay error frame %s", self.partition, self.relay_error,
                                extra={"event": "relay_error", "source": SOURCE, "partition": self.partition,
                                       "error": decoded.type, "detail": decoded.body["message"], "last_id": last})
                    break  # the relay closes after an error
                else:
                    self.stats.unknown_frames += 1
                    log.info("%s: skipped a frame of unknown type %r", self.partition, decoded.type)
                continue
            if last is not None and seq <= last:
                stats.duplicates_skipped += 1
                continue
            judged = judge.last
            if (judged is not None and judged < seq and seq - judged <= max_jump
                    and not judge.skip_announced and not judge.bad_in_row):
                judge.last = seq  # all judge.judge would do: accept, its flags already clear
            else:
                verdict = judge.judge(seq)
                if verdict.action != ACCEPT:
                    if verdict.action == REPLAY:
                        stats.duplicates_skipped += 1
                    else:
                        self._implausible(frame, f"{decoded.type} seq {seq}: {verdict.reason}", verdict, dead, received)
                    continue
            last = seq
            last_time = decoded.time or last_time
            accepted += 1
            if not decoded.wanted:
                filtered += max(1, decoded.total_ops)
                continue
            if kind == "commit":
                did, rev = decoded.did, decoded.rev
                known = known_revs.get(did)
                if known is None and len(known_revs) < rev_capacity:  # a DID not seen yet, room left
                    known_revs[did] = (rev, 0)
                elif known is not None and known[1] == 0 and rev > known[0]:  # forward from a firehose rev
                    del known_revs[did]  # re-inserted last: the table's order is its eviction order
                    known_revs[did] = (rev, 0)
                elif not advance_rev(did, rev):  # the rest as RevTracker.advance decides it
                    self._stale(f"{decoded.type} seq", seq, did, rev)
                    continue
                ops = decoded.ops
                if not ops:
                    filtered += decoded.total_ops
                    continue
                filtered += decoded.total_ops - len(ops)
                timestamp = _timestamp(decoded.time)
                try:
                    events.extend(self._commit_events(decoded, timestamp, received))
                except cbor.CborError as exc:  # only in json form: a record that is not valid DAG-CBOR
                    dead.append(self._dead(frame, f"#commit seq {seq}: record: {exc}", seq, received))
                continue
            if kind == "sync" and not advance_rev(decoded.did, decoded.rev, allow_equal=True):
                self._stale(f"{decoded.type} seq", seq, decoded.did, decoded.rev)
                continue
            timestamp = _timestamp(decoded.time)
            body = decoded.body
            fields: dict[str, Any] = {"did": decoded.did, "seq": seq, "time": decoded.time}
            if kind == "identity" and isinstance(body.get("handle"), str):
                fields["handle"] = body["handle"]
            elif kind == "account":
                fields["active"] = "true" if body.get("active") else "false"
                if isinstance(body.get("status"), str):
                    fields["status"] = body["status"]
            elif kind == "sync":
                fields["rev"] = decoded.rev
            payload = frame[decoded.body_offset :]
            if self.record_format == "json":
                try:
                    payload = record_json(payload)
                except cbor.CborError as exc:
                    dead.append(self._dead(frame, f"{decoded.type} seq {seq}: body: {exc}", seq, received))
                    continue
            events.append(Event(source=SOURCE, partition=self.partition, position=seq, kind=kind, payload=payload,
                                timestamp=timestamp, received=received, fields=fields))
        self.progress += accepted
        stats.filtered += filtered
        if accepted:
            stats.refused = None  # what self._accepted() does, once per read
        if last_time:
            self.stats.position_time = _timestamp(last_time) or self.stats.position_time
        return self._finish(events, dead, last, len(frames))

    def _bad(self, payload: bytes, reason: str, seq: int | None, last: int | None, dead: list[DeadLetter], received: float) -> int | None:
        """A frame that did not decode, or over a limit: skipped when it is a replay, else dead-lettered
        at its seq when that was read and is plausible (the cursor moves past it), else without one.

        Returns the position read so far.
        """
        if seq is not None and last is not None and seq <= last:
            self.stats.duplicates_skipped += 1
            return last
        self._count_bad()
        if seq is None:
            dead.append(self._dead(payload, reason, None, received))
            return last
        verdict = self.judge.judge(seq)
        if verdict.action == REPLAY:
            self.stats.duplicates_skipped += 1
            return last
        if verdict.action != ACCEPT:
            self._implausible(payload, f"{reason}; {verdict.reason}", verdict, dead, received)
            return last
        self._accepted()
        dead.append(self._dead(payload, reason, seq, received))
        return seq

    def _commit_events(self, decoded: Any, timestamp: float, received: float) -> list[Event]:
        out = []
        as_json = self.record_format == "json"
        for op in decoded.ops:
            fields: dict[str, Any] = {
                "did": decoded.did, "collection": op.collection, "rkey": op.rkey, "action": op.action,
                "rev": decoded.rev, "seq": decoded.seq, "time": decoded.time,
            }
            key = b""
            payload = b""
            if op.cid is not None:
                cid = cbor.cid_to_str(op.cid)
                fields["cid"] = cid
                key = cid.encode()
                payload = op.record
                if as_json:
                    payload = record_json(payload)
            out.append(Event(source=SOURCE, partition=self.partition, position=decoded.seq, sub=op.index, kind="commit",
                             key=key, payload=payload, timestamp=timestamp, received=received, fields=fields))
        return out


@attrs.define(eq=False)
class JetstreamReader(_ReaderBase):
    """Turns Jetstream messages into chunks of events shaped like the firehose's (no I/O).

    ``data`` of a record event is DAG-CBOR re-encoded from Jetstream's JSON (canonical, so the
    bytes and the CID are the firehose's; the CID is checked) or, in ``json`` form, the record's
    compact JSON.

    Events are judged by identity, not by ``time_us`` (:mod:`weir.codecs.atproto_order`): a late
    one is persisted at a position above the highest so far, a known one is skipped.
    """

    decoder: JetstreamDecoder = attrs.Factory(JetstreamDecoder)
    order: JetstreamOrder | None = None  # None: a fresh one, from ``last_id`` as a start
    rewind_us: int = 2_000_000
    judge: TimeJudge = attrs.Factory(lambda: TimeJudge(max_bad_in_row=_DEFAULTS.max_bad_positions,
                                                       max_skew_us=round(_DEFAULTS.max_future_skew * 1e6)))
    clock: Callable[[], float] = time.time  # the wall clock a time_us is judged against

    def __attrs_post_init__(self) -> None:
        if self.order is None:
            self.order = JetstreamOrder(margin=self.rewind_us, high=self.last_id, floor=self.last_id, revs=self.revs)
        self.revs = self.order.revs
        self.last_id = self.order.high

    def resume_from(self) -> int | None:
        assert self.order is not None
        return self.order.resume_cursor()

    def read(self, messages: list[bytes | str], received: float) -> Chunk | None:
        events: list[Event] = []
        dead, self._unplaced = self._unplaced, []
        order = self.order
        assert order is not None
        late: list[tuple[int, int, bool]] = []
        now_us = round(self.clock() * 1e6)
        for message in messages:
            if isinstance(message, OversizedMessage):
                time_us = time_us_of_head(_bytes_of(message.head), self.decoder.dictionary)
                head, reason = self._over_limit(message, None, self.decoder.max_frame)
                self._bad_message(time_us, head, reason, dead, received, now_us)
                continue
            raw = message.encode() if isinstance(message, str) else message
            try:
                decoded = self.decoder.decode(message)
            except OverLimit as exc:
                head, reason = self._over_limit(raw, exc, self.decoder.max_frame)
                self._bad_message(exc.seq, head, reason, dead, received, now_us)
                continue
            except FrameError as exc:
                self._bad_message(exc.seq, raw, str(exc), dead, received, now_us)
                continue
            verdict = self.judge.judge(decoded.time_us, now_us=now_us)
            if verdict.action != ACCEPT:
                self._implausible(raw, f"{decoded.kind} at time_us {decoded.time_us}: {verdict.reason}", verdict, dead, received)
                continue
            self._accepted()
            if decoded.kind == "unknown" or not decoded.wanted:
                self.consecutive_bad = 0
                if decoded.kind == "unknown":
                    self.stats.unknown_frames += 1
                else:
                    self.stats.filtered += 1
                before = order.high
                if order.pass_over(decoded.time_us) != before:
                    self.progress += 1
                continue
            rev = decoded.body["rev"] if decoded.kind == "commit" else ""
            admission = order.admit(decoded.time_us, _identity(decoded), did=decoded.did, rev=rev)
            verdict = admission.verdict
            if not admission.persist:
                self.consecutive_bad = 0
                if verdict == STALE:
                    self._stale("commit at time_us", decoded.time_us, decoded.did, rev)
                else:  # DUPLICATE, or BEFORE_START: at or below the configured start, as if persisted
                    self.stats.duplicates_skipped += 1
                continue
            self.progress += 1
            try:
                parts = self._parts(decoded, received)
            except FrameError as exc:
                # At its time_us, not at its position: a replay of it is then skipped by the cursor rule.
                self._count_bad()
                dead.append(self._dead(raw, str(exc), exc.seq, received))
                continue
            self.consecutive_bad = 0
            if verdict == LATE:
                late.append((decoded.time_us, admission.position, admission.beyond_margin))
            events.append(Event(source=SOURCE, partition=self.partition, position=admission.position, **parts))
        if late:
            self._report_late(late)
        if order.high is not None:
            self.stats.position_time = order.high / 1e6
        return self._finish(events, dead, order.high, len(messages))

    def _bad_message(self, time_us: int | None, payload: bytes, reason: str, dead: list[DeadLetter], received: float,
                     now_us: int) -> None:
        """A message that did not decode, or over a limit. Its time_us (when readable and plausible)
        is its dead letter's position, so a replay of it is skipped by the cursor rule (and by the
        reader at or below its highest); an implausible one is dead-lettered without a position."""
        order = self.order
        assert order is not None
        if time_us is not None and order.high is not None and time_us <= order.high:
            self.stats.duplicates_skipped += 1  # a replay (or a late malformed message: see docs/atproto.md)
            return
        self._count_bad()
        if time_us is not None:
            verdict = self.judge.judge(time_us, now_us=now_us)
            if verdict.action != ACCEPT:
                self._implausible(payload, f"{reason}; {verdict.reason}", verdict, dead, received)
                return
            self._accepted()
        dead.append(self._dead(payload, reason, time_us, received))
        if time_us is not None:
            order.pass_over(time_us)
            self.progress += 1

    def _report_late(self, late: list[tuple[int, int, bool]]) -> None:
        """One log line per read for the events that came late: (time_us, position, beyond the rewind)."""
        self.stats.reordered += len(late)
        beyond = sum(1 for _, _, far in late if far)
        log.log(logging.WARNING if beyond else logging.INFO,
                "%s: %d event(s) arrived after later ones (time_us from %d), persisted at positions %d..%d%s",
                self.partition, len(late), min(t for t, _, _ in late), late[0][1], late[-1][1],
                f"; {beyond} older than atproto.jetstream_rewind (a crash before they are durable would lose them)" if beyond else "",
                extra={"event": "reordered", "source": SOURCE, "partition": self.partition, "count": len(late),
                       "oldest_time_us": min(t for t, _, _ in late), "first_position": late[0][1],
                       "last_position": late[-1][1], "beyond_rewind": beyond})

    def _parts(self, decoded: JetstreamMessage, received: float) -> dict[str, Any]:
        """Everything of the event but its position (given by the order once it is admitted)."""
        body = decoded.body
        time_us = decoded.time_us
        fields: dict[str, Any] = {"did": decoded.did, "time_us": time_us}
        if decoded.kind == "commit":
            fields.update(collection=body["collection"], rkey=body["rkey"], action=body["operation"], rev=body["rev"])
            fields["time"] = _iso(time_us)
            key = payload = b""
            if body["operation"] != "delete":
                fields["cid"] = body["cid"]
                key = body["cid"].encode()
                payload = self._record_bytes(body["record"], body["cid"], time_us)
            return dict(kind="commit", key=key, payload=payload, timestamp=time_us / 1e6, received=received, fields=fields)
        fields["time"] = body.get("time") if isinstance(body.get("time"), str) else _iso(time_us)
        if decoded.kind == "identity" and isinstance(body.get("handle"), str):
            fields["handle"] = body["handle"]
        elif decoded.kind == "account":
            fields["active"] = "true" if body.get("active") else "false"
            if isinstance(body.get("status"), str):
                fields["status"] = body["status"]
        try:
            payload = compact_json(body) if self.record_format == "json" else json_dag_cbor(body)
        except cbor.CborError as exc:
            raise FrameError(f"{decoded.kind} at time_us {time_us}: {exc}", time_us) from None
        return dict(kind=decoded.kind, payload=payload, timestamp=_timestamp(fields["time"]), received=received, fields=fields)

    def _record_bytes(self, record: dict[str, Any], cid: str, time_us: int) -> bytes:
        if self.record_format == "json":
            return compact_json(record)
        try:
            block = json_dag_cbor(record)
            problem = cbor.verify_block(cbor.CID.parse(cid).raw, block)
        except cbor.CborError as exc:
            raise FrameError(f"commit at time_us {time_us}: record: {exc}", time_us) from None
        if problem is not None:
            raise FrameError(f"commit at time_us {time_us}: record re-encoded as DAG-CBOR: {problem}", time_us)
        return block


def _identity(decoded: JetstreamMessage) -> tuple[str | int, ...]:
    if decoded.kind == "commit":
        body = decoded.body
        return commit_identity(decoded.did, body["rev"], body["collection"], body["rkey"], body["operation"],
                               body.get("cid", "") if body["operation"] != "delete" else "")
    return event_identity(decoded.kind, decoded.did, decoded.time_us)


def _iso(time_us: int) -> str:
    moment = datetime.fromtimestamp(time_us / 1e6, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- the connection


def record_filter(settings: AtprotoSettings) -> RecordFilter:
    return RecordFilter.build(collections=settings.collections, dids=settings.dids, actions=settings.actions, kinds=settings.kinds)


def default_partition(settings: AtprotoSettings) -> str:
    """``<mode>-<host>``: firehose seqs and Jetstream time_us are different cursor units."""
    if settings.partition:
        return settings.partition
    url = settings.url if settings.mode == "firehose" else settings.jetstream_url
    return f"{settings.mode}-{urlsplit(url).hostname}"


def rewind_us(settings: AtprotoSettings) -> int:
    return round(settings.jetstream_rewind * 1_000_000)


def new_reader(settings: AtprotoSettings, partition: str, stats: AtprotoStats, last_id: int | None,
               dictionary: bytes | None = None, *, persisted: list[dict[str, str]] | None = None,
               persisted_cursor: bool = False) -> FirehoseReader | JetstreamReader:
    """A reader that reads on after ``last_id`` (``persisted_cursor``: the stored cursor, not a start).

    Jetstream: with ``persisted`` (the fields of the stream's entries from ``last_id`` minus the
    rewind on), ``last_id`` is the stored cursor and the identity memory is rebuilt from them;
    without, ``last_id`` is a start (nothing at or below it is taken).
    """
    revs = RevTracker(capacity=settings.rev_cache)
    common = dict(partition=partition, stats=stats, keep=record_filter(settings), record_format=settings.record_format,
                  revs=revs, last_id=last_id, dead_letter_bytes=settings.dead_letter_bytes)
    if settings.mode == "firehose":
        # Only a persisted cursor is a seq the relay gave: a configured start is not judged against.
        judge = SeqJudge(max_bad_in_row=settings.max_bad_positions, max_jump=settings.max_seq_jump,
                         last=last_id if persisted_cursor else None)
        return FirehoseReader(**common, max_frame=settings.max_frame_bytes, max_ops=settings.max_ops,
                              max_blocks=settings.max_blocks_bytes, judge=judge)
    decoder = JetstreamDecoder(keep=common["keep"], dictionary=dictionary, max_frame=settings.max_frame_bytes)
    order = None
    if persisted is not None and last_id is not None:
        identities = [identity for identity in map(identity_of_fields, persisted) if identity is not None]
        order = JetstreamOrder.resumed(last_id, identities, margin=rewind_us(settings), revs=revs)
    judge = TimeJudge(max_bad_in_row=settings.max_bad_positions, max_skew_us=round(settings.max_future_skew * 1e6))
    return JetstreamReader(**common, decoder=decoder, order=order, rewind_us=rewind_us(settings), judge=judge)


def connect_url(settings: AtprotoSettings, cursor: int | None) -> str:
    """The WebSocket URL to open, resuming after ``cursor`` (None: per ``settings.start``)."""
    if cursor is None and settings.start != "live":
        cursor = 0 if settings.start == "oldest" else int(settings.start)
    if settings.mode == "firehose":
        return _endpoint(settings.url, FIREHOSE_PATH, [] if cursor is None else [("cursor", str(cursor))])
    params: list[tuple[str, str]] = [("wantedCollections", c) for c in settings.collections]
    params += [("wantedDids", d) for d in settings.dids]
    if cursor is not None:
        params.append(("cursor", str(max(cursor, 1))))  # Jetstream replays inclusively: known events are skipped by identity
    if settings.compress:
        params.append(("compress", "true"))
    return _endpoint(settings.jetstream_url, JETSTREAM_PATH, params)


def _endpoint(server: str, path: str, params: list[tuple[str, str]]) -> str:
    """``path`` under the server's URL, with ``params`` after the URL's own query (a gateway's
    ``?token=…`` stays in the query, not glued in front of the path)."""
    parts = urlsplit(server)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + path, query, ""))


def retry_after(exc: BaseException, *, now: float | None = None) -> float | None:
    """Seconds from a 429/503 rejection's Retry-After header, if it has one (at most MAX_RETRY_AFTER).

    The header is either seconds or an HTTP-date (``Wed, 21 Oct 2015 07:28:00 GMT``), which is
    compared with ``now`` (unix seconds; default the wall clock).
    """
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return retry_after(exc.exceptions[0], now=now)
    if isinstance(exc, trio_websocket.ConnectionRejected):
        for name, value in exc.headers or ():
            if name.lower() == b"retry-after":
                return _retry_after_seconds(value.decode("latin-1").strip(), time.time() if now is None else now)
    return None


def _retry_after_seconds(text: str, now: float) -> float | None:
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:  # "-0000" parses as naive; HTTP-dates are always GMT
            moment = moment.replace(tzinfo=timezone.utc)
        seconds = moment.timestamp() - now
    if math.isnan(seconds):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


# --------------------------------------------------------------------------- the zstd dictionary


def dictionary_source(settings: AtprotoSettings) -> str | None:
    """Where the Jetstream zstd dictionary comes from: a path or URL; None when frames are not compressed."""
    if settings.mode != "jetstream" or not settings.compress:
        return None
    return settings.zstd_dictionary or JETSTREAM_ZSTD_DICTIONARY_URL


def dictionary_cache_path(cache_dir: Path, url: str) -> Path:
    """Where a fetched dictionary is kept: one file per URL, under weir's data directory."""
    return cache_dir / "atproto" / f"zstd-dictionary-{hashlib.sha256(url.encode()).hexdigest()[:16]}"


class HttpStatusError(Exception):
    """An HTTP response other than 200 (after redirects)."""


async def _http_get(url: str, *, redirects: int = 5) -> bytes:
    """The body of ``url`` (at most MAX_DICTIONARY_BYTES), following redirects.

    h11 (already weir's HTTP/1.1 for /metrics) over trio's TCP and TLS: cancellable like every
    other wait in weir, and its socket is closed when it ends, which urllib in a worker thread
    cannot promise (an abandoned thread keeps its socket until its own timeout). No proxy is used.
    """
    for _ in range(redirects + 1):
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme == "https":
            stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(
                host, parts.port or 443, ssl_context=ssl.create_default_context(), https_compatible=True)
        else:
            stream = await trio.open_tcp_stream(host, parts.port or 80)
        async with stream:
            connection = h11.Connection(h11.CLIENT)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            headers = [("Host", parts.netloc.rpartition("@")[2]), ("User-Agent", "weir"), ("Accept-Encoding", "identity"),
                       ("Connection", "close")]
            await stream.send_all(connection.send(h11.Request(method="GET", target=target, headers=headers)))
            await stream.send_all(connection.send(h11.EndOfMessage()))
            response: h11.Response | None = None
            body = bytearray()
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await stream.receive_some(1 << 16))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_DICTIONARY_BYTES:
                        raise ValueError(f"the body is larger than {MAX_DICTIONARY_BYTES} bytes")
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
        assert response is not None  # h11 hands over the response before its body or end
        location = dict(response.headers).get(b"location")
        if response.status_code in (301, 302, 303, 307, 308) and location:
            url = urljoin(url, location.decode("latin-1"))
            continue
        if response.status_code != 200:
            raise HttpStatusError(f"HTTP {response.status_code} {response.reason.decode('latin-1')}".strip())
        return bytes(body)
    raise HttpStatusError(f"more than {redirects} redirects")


def _fetch_problem(exc: BaseException) -> str:
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:  # e.g. a TLS failure
        exc = exc.__cause__
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__  # trio's "all attempts to connect … failed": the reasons are a group here
    if isinstance(exc, OSError) and isinstance(cause, BaseExceptionGroup):
        reasons = {inner.strerror or str(inner) for inner in cause.exceptions if isinstance(inner, OSError)}
        text += f" ({', '.join(sorted(reasons))})" if reasons else ""
    return text


async def load_zstd_dictionary(source: str, cache_dir: Path, *, timeout: float) -> bytes:
    """The dictionary at ``source``: a file's bytes, or a URL's body fetched once and then read
    from ``cache_dir`` (keyed by the URL) on every later start.

    Raises:
        DictionaryUnavailable: unreadable, unreachable within ``timeout``, or not a zstd dictionary.
    """
    def unavailable(message: str) -> DictionaryUnavailable:
        return DictionaryUnavailable(f"atproto.zstd_dictionary: {message}")

    if urlsplit(source).scheme not in ("http", "https"):  # the config allows nothing else with "://"
        try:
            return await trio.Path(source).read_bytes()
        except OSError as exc:
            raise unavailable(f"cannot read {source!r}: {exc.strerror or exc}") from None
    cached = dictionary_cache_path(cache_dir, source)
    shown = redact_url(source)  # a URL may carry an access token
    try:
        data = await trio.Path(cached).read_bytes()
        ident = dictionary_id(data)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:  # damaged or unreadable: fetch it again
        log.warning("ignoring the cached zstd dictionary %s: %s", cached, exc)
    else:
        log.info("zstd dictionary %s (id %d, %d bytes) from the cache %s", shown, ident, len(data), cached,
                 extra={"event": "zstd_dictionary", "source": SOURCE, "url": shown, "dict_id": ident,
                        "bytes": len(data), "cache": str(cached), "fetched": False})
        return data
    try:
        with trio.fail_after(timeout):
            data = await _http_get(source)
    except trio.TooSlowError:
        raise unavailable(f"cannot fetch {shown}: no answer within {timeout:g}s") from None
    except (OSError, ValueError, HttpStatusError, h11.ProtocolError, trio.BrokenResourceError) as exc:
        raise unavailable(f"cannot fetch {shown}: {_fetch_problem(exc)}") from None
    try:
        ident = dictionary_id(data)
    except ValueError as exc:
        raise unavailable(f"{shown} did not return a zstd dictionary: {exc}") from None
    try:
        await trio.to_thread.run_sync(write_atomically, cached, data)
    except OSError as exc:  # still usable from memory; only the next start fetches again
        log.warning("cannot cache the zstd dictionary in %s: %s", cached, exc.strerror or exc)
    log.info("zstd dictionary %s (id %d, %d bytes) fetched, cached in %s", shown, ident, len(data), cached,
             extra={"event": "zstd_dictionary", "source": SOURCE, "url": shown, "dict_id": ident,
                    "bytes": len(data), "cache": str(cached), "fetched": True})
    return data


@attrs.define(eq=False)
class ZstdDictionary:
    """One network's Jetstream dictionary: loaded when its connection first starts, then kept, so
    pipeline restarts neither read nor fetch it again."""

    source: str
    cache_dir: Path
    timeout: float
    _data: bytes | None = None

    async def get(self) -> bytes:
        if self._data is None:
            self._data = await load_zstd_dictionary(self.source, self.cache_dir, timeout=self.timeout)
        return self._data


def is_transient(exc: BaseException) -> bool:
    """Network faults a reconnect cures; anything else (a 4xx rejection, a bug) is for the supervisor."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_transient(inner) for inner in exc.exceptions)
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return exc.status_code in (408, 425, 429) or exc.status_code >= 500
    return isinstance(
        exc,
        (IdleStream, RelayError, TooManyBadFrames, RelayRefused, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed,
         trio_websocket.ConnectionTimeout, trio_websocket.DisconnectionTimeout, trio.BrokenResourceError, trio.TooSlowError, OSError,
         TimeoutError),
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _describe(exc.exceptions[0])
    if isinstance(exc, trio_websocket.ConnectionRejected):
        asked = next((value.decode("latin-1") for name, value in exc.headers or () if name.lower() == b"retry-after"), None)
        suffix = "" if asked is None else f" (Retry-After: {asked})"
        return f"HTTP {exc.status_code} before the WebSocket upgrade{suffix}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _receive_batch(ws: trio_websocket.WebSocketConnection, limit: int) -> list[bytes | str | OversizedMessage]:
    """One message (waiting for it), then whatever else is already queued, up to ``limit``."""
    batch = [await ws.get_message()]
    queue = getattr(ws, "_recv_channel", None)  # trio-websocket's message queue: no public nowait API
    while queue is not None and len(batch) < limit:
        try:
            batch.append(queue.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            break
    return batch


async def run_atproto_connection(
    stopping: trio.Event,
    *,
    settings: AtprotoSettings,
    partition: str,
    read_cursor: Callable[[], Awaitable[int | None]],
    send: trio.MemorySendChannel[Chunk],
    read_since: Callable[[int], Awaitable[list[dict[str, str]]]] | None = None,
    stats: AtprotoStats,
    backoff: Backoff,
    breaker: CircuitBreaker | None = None,
    rng: random.Random | None = None,
    dictionary: ZstdDictionary | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Stream one relay (or Jetstream server) into ``send`` until ``stopping`` is set.

    Same contract as the Farcaster source: ready at once; stopping interrupts (what was not handed
    on is replayed by the next start, from the persisted cursor); network faults reconnect with
    backoff (a 429's or 503's Retry-After is honoured) behind ``breaker``; a new incarnation
    resumes from the persisted cursor (Jetstream: ``atproto.jetstream_rewind`` before it, knowing
    what it persisted there from ``read_since``). ``dictionary`` (Jetstream with compression) is loaded
    first; when it cannot be, :class:`DictionaryUnavailable` ends the actor (the supervisor
    restarts it, and gives up if it keeps failing).
    """
    rng = rng or random.Random()
    task_status.started()
    async with until_stopped(stopping):
        stored = await read_cursor()
        recent = None
        if stored is not None and settings.mode == "jetstream" and read_since is not None:
            recent = await read_since(max(0, stored - rewind_us(settings)))
        start = stored
        if stored is None and settings.start not in ("live", "oldest"):
            start = int(settings.start)
        zstd_dictionary = None
        if dictionary is not None:
            try:
                zstd_dictionary = await dictionary.get()
            except DictionaryUnavailable as exc:
                stats.last_error = str(exc)
                log.error("%s: %s", partition, exc, extra={"event": "zstd_dictionary_unavailable", "source": SOURCE,
                                                           "partition": partition, "url": redact_url(dictionary.source), "error": str(exc)})
                raise
        reader = new_reader(settings, partition, stats, start, zstd_dictionary, persisted=recent, persisted_cursor=stored is not None)

        async def session() -> None:
            await _stream_once(connect_url(settings, reader.resume_from()), reader, send, settings, stats, breaker)

        async def on_lost(exc: BaseException, delay: float, opened: bool) -> None:
            stats.last_error = _describe(exc)
            url = _host(connect_url(settings, reader.resume_from()))
            resume = f"after {reader.last_id}" if reader.last_id is not None else f"from the start ({settings.start})"
            log.warning("%s: connection to %s %s (%s); reconnecting in %.2fs %s",
                        partition, url, "lost" if opened else "did not open", stats.last_error, delay, resume,
                        extra={"event": "disconnect", "source": SOURCE, "partition": partition, "url": url,
                               "opened": opened, "error": stats.last_error, "reconnect_in": round(delay, 3),
                               "resume_from": reader.resume_from(), "reconnects": stats.reconnects})

        await reconnect_forever(
            session, progress=lambda: reader.progress, is_transient=is_transient, on_lost=on_lost,
            stats=stats, backoff=backoff, rng=rng, breaker=breaker, retry_after=retry_after,
            peer=f"{partition}'s relay {redact_url(settings.url)}",
        )
    stats.connected = False


@asynccontextmanager
async def open_websocket(url: str, settings: AtprotoSettings) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A client WebSocket whose TCP stream is always closed (trio-websocket's own
    ``open_websocket_url`` leaks the socket when the server rejects the handshake, e.g. with a 429).
    """
    # A message over the frame limit is read past, its head kept: it reaches the reader as an
    # OversizedMessage and becomes a dead letter; the connection is never closed with 1009.
    async with open_client(url, connect_timeout=settings.connect_timeout, message_queue_size=settings.read_batch,
                           max_message_size=settings.max_frame_bytes, oversized_over=settings.max_frame_bytes,
                           oversized_keep=max(HEAD_BYTES, settings.dead_letter_bytes)) as (_, ws):
        yield ws


def _host(url: str) -> str:
    """The server's URL without the query, and without credentials (for logs)."""
    parts = urlsplit(redact_url(url))
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _cursor_in(url: str) -> int | None:
    """The ``cursor=`` a connection URL asks for (None: live)."""
    for name, _, value in (pair.partition("=") for pair in urlsplit(url).query.split("&")):
        if name == "cursor":
            return int(value)
    return None


async def _stream_once(url: str, reader: Any, send: trio.MemorySendChannel[Chunk], settings: AtprotoSettings,
                       stats: AtprotoStats, breaker: CircuitBreaker | None) -> None:
    # A run of bad frames is counted per connection: one left from a session that ended another
    # way (an error frame, a stop) must not end this one at its first batch.
    reader.consecutive_bad = reader.longest_bad_run = 0
    reader.judge.bad_in_row = 0  # likewise the run of implausible positions, and a refusal pending
    reader.refusal = None
    stats.connects += 1
    log.info("%s: connecting to %s", reader.partition, redact_url(url),
             extra={"event": "connect", "source": SOURCE, "partition": reader.partition, "url": _host(url),
                    "from_id": _cursor_in(url), "connects": stats.connects})
    async with open_websocket(url, settings) as ws:
        while True:
            batch: list[bytes | str | OversizedMessage] | None = None
            with trio.move_on_after(settings.idle_timeout):
                batch = await _receive_batch(ws, settings.read_batch)
            if batch is None:
                raise IdleStream(f"no data for {settings.idle_timeout:g}s")
            chunk = reader.read(batch, trio.current_time())
            if not stats.connected and reader.relay_error is None:
                stats.connected = True
                stats.last_error = None
                if breaker is not None:
                    breaker.record_success()
            if chunk is not None:
                await send.send(chunk)
            if reader.relay_error is not None:
                error, reader.relay_error = reader.relay_error, None
                raise error
            if reader.refusal is not None:
                _refuse(reader, url)
            if reader.longest_bad_run >= settings.max_bad_frames:
                reader.consecutive_bad = reader.longest_bad_run = 0
                raise TooManyBadFrames(f"{settings.max_bad_frames} malformed frames in a row")


def _refuse(reader: FirehoseReader | JetstreamReader, url: str) -> NoReturn:
    """Drop a relay that keeps sending implausible positions: reported, then reconnected with backoff."""
    stats = reader.stats
    stats.refusals += 1
    stats.refused = reader.refusal
    shown = _host(url)
    log.error("%s: refusing %s: %s", reader.partition, shown, reader.refusal,
              extra={"event": "relay_refused", "source": SOURCE, "partition": reader.partition, "url": shown,
                     "reason": reader.refusal, "refusals": stats.refusals, "last_id": reader.last_id})
    raise RelayRefused(f"the relay kept sending implausible positions: {reader.refusal}")
