"""The firehose reader's ``read`` as it was before the session-10 tuning (main at 968d407), kept
verbatim as the oracle of tests/test_fuzz_decoders.py: the tuned reader must hand on the same events,
dead letters, cursor, judge state and counts for every list of frames. Only imports changed (the
shared pieces come from weir) and the class around it, a subclass that replaces only ``read``.
"""

from __future__ import annotations

from typing import Any

from weir.actors.atproto import SOURCE, FirehoseReader, RelayError, _bytes_of, _timestamp, log
from weir.actors.ws_bounded import OversizedMessage
from weir.codecs import atproto_cbor as cbor
from weir.codecs.atproto_firehose import FrameError, OverLimit, decode_frame, seq_of_head
from weir.codecs.atproto_json import record_json
from weir.codecs.atproto_positions import ACCEPT, REPLAY
from weir.events import Chunk, Event


class FirehoseReaderBefore(FirehoseReader):
    """A FirehoseReader whose ``read`` is main's at 968d407 (the judge and the rev tracker called per frame)."""

    def read(self, frames: list[bytes | str | OversizedMessage], received: float) -> Chunk | None:
        events: list[Event] = []
        dead, self._unplaced = self._unplaced, []
        last = self.last_id
        last_time = ""  # the accepted frame's time, read once per chunk (for the progress lag)
        keep, max_frame, max_blocks, max_ops = self.keep, self.max_frame, self.max_blocks, self.max_ops
        judge, stats, advance_rev = self.judge, self.stats, self.revs.advance
        accepted = 0  # frames that advanced the position, added to self.progress after the loop
        for frame in frames:
            failure: FrameError | None = None
            if type(frame) is not bytes:  # rare: tested apart, so a binary frame costs one test
                if isinstance(frame, OversizedMessage):
                    seq = seq_of_head(_bytes_of(frame.head))  # from the whole head the transport kept
                    head, reason = self._over_limit(frame, None, self.max_frame)
                    last = self._bad(head, reason, seq, last, dead, received)
                    continue
                if isinstance(frame, str):
                    frame = frame.encode()
                    failure = FrameError("text message on the firehose (frames are binary)")
            try:
                if failure is not None:
                    raise failure
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
            verdict = judge.judge(seq)
            if verdict.action != ACCEPT:
                if verdict.action == REPLAY:
                    stats.duplicates_skipped += 1
                else:
                    self._implausible(frame, f"{decoded.type} seq {seq}: {verdict.reason}", verdict, dead, received)
                continue
            stats.refused = None  # what self._accepted() does, without the call on every frame
            last = seq
            last_time = decoded.time or last_time
            accepted += 1
            if not decoded.wanted:
                stats.filtered += max(1, decoded.total_ops)
                continue
            is_commit = kind == "commit"
            if (is_commit or kind == "sync") and not advance_rev(decoded.did, decoded.rev, allow_equal=not is_commit):
                self._stale(f"{decoded.type} seq", seq, decoded.did, decoded.rev)
                continue
            if is_commit:
                ops = decoded.ops
                stats.filtered += decoded.total_ops - len(ops)
                if not ops:
                    continue
                timestamp = _timestamp(decoded.time)
                try:
                    events.extend(self._commit_events(decoded, timestamp, received))
                except cbor.CborError as exc:  # only in json form: a record that is not valid DAG-CBOR
                    dead.append(self._dead(frame, f"#commit seq {seq}: record: {exc}", seq, received))
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
        if last_time:
            self.stats.position_time = _timestamp(last_time) or self.stats.position_time
        return self._finish(events, dead, last, len(frames))
