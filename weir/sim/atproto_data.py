"""Deterministic AT Protocol event history for the simulators (firehose and Jetstream).

Everything is real: records and commit objects are canonical DAG-CBOR, ``blocks`` is a CAR v1
whose CIDs are the sha-256 of their blocks, revs are TIDs that increase per repository. The same
history is served as firehose frames (one per event) and as Jetstream JSON (one message per op),
and :func:`expected_records` says what an ingestor must persist from it. Compressed Jetstream
frames use :func:`jetstream_dictionary`, trained here as Bluesky trains its published one.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Iterator
from datetime import datetime, timezone

import attrs
import zstandard

from weir.codecs import atproto_cbor as cbor
from weir.codecs.atproto_cbor import CID

COLLECTIONS = (
    "app.bsky.feed.post",
    "app.bsky.feed.like",
    "app.bsky.feed.repost",
    "app.bsky.graph.follow",
    "app.bsky.actor.profile",
)
_TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
DICTIONARY_ID = 0x77656972  # "weir": any id outside zstd's reserved range (below 32768)


@attrs.frozen(kw_only=True)
class AtprotoSimConfig:
    """What a simulated relay holds and how it behaves.

    Attributes:
        seed: makes the history reproducible.
        total: events in the history (commits and identity/account/sync events).
        rate: events released per second; 0 = all available at once.
        dids: repositories that commit.
        first_seq: seq of the first event; later seqs have gaps of 1 or 2.
        other_every: every Nth event is #identity/#account/#sync instead of a commit (0: never).
        corrupt_every: every Nth commit has a record block that does not match its CID (None: never).
        inclusive_replay: replay from ``cursor`` includes the event at ``cursor`` (relays differ).
        drop_after: send ConsumerTooSlow and close after this many frames per connection (None: never).
        reject_first: answer the first N connection attempts with HTTP ``reject_status``.
        reject_status: the status of those rejections (429, 503, …).
        retry_after: their Retry-After header in seconds (None: no header).
        stale_every: every Nth commit (of a DID that committed before) carries a rev that is not
            above the DID's last one: alternately equal to it and older (None: never).
        retention: events kept for replay (None: all); an older cursor gets #info OutdatedCursor.
        time_base_us: unix µs of the first event.
        history: with a ``rate``, events released at once at the start; the rest at the rate from
            the first connection on (so a replay always ends where a live part begins).
        reorder_at_cutover: Jetstream, on every connection with a cursor: the first N live
            messages (released after the connection) are sent before the last N replayed ones,
            which thus arrive with a smaller time_us than messages already sent (as Bluesky's
            Jetstream does around its replay-to-live cutover).
        duplicate_at_cutover: Jetstream, there too: the last N replayed messages are sent again
            after the reordered ones (true duplicates).
        ops_per_commit: each commit's op count is drawn from these (repeat a count to weight it).
        time_step_us: µs of ``time_us`` between events (plus up to 500 µs of jitter): 1e6 / ``rate``
            makes ``time_us`` follow the release, as a live relay's does (Jetstream's rewind is in it).
    """

    seed: int = 1
    total: int = 1000
    rate: float = 0.0
    dids: int = 40
    first_seq: int = 1000
    other_every: int = 25
    corrupt_every: int | None = None
    inclusive_replay: bool = True
    drop_after: int | None = None
    reject_first: int = 0
    reject_status: int = 429
    retry_after: float | None = 0.0
    stale_every: int | None = None
    retention: int | None = None
    time_base_us: int = 1_754_850_000_000_000
    history: int = 0
    reorder_at_cutover: int = 0
    duplicate_at_cutover: int = 0
    ops_per_commit: tuple[int, ...] = attrs.field(default=(1, 1, 1, 2, 3), converter=tuple)
    time_step_us: int = attrs.field(default=1000, validator=attrs.validators.ge(1000))


@attrs.frozen(slots=True, kw_only=True)
class SimRecordOp:
    index: int
    action: str
    collection: str
    rkey: str
    cid: CID | None
    record: dict | None  # the record value (CIDs as CID)
    block: bytes | None  # its DAG-CBOR as put in the CAR
    tampered: bool = False  # the block does not match the CID (a corrupt commit's first record)


@attrs.frozen(slots=True, kw_only=True)
class SimEvent:
    """One firehose event and its Jetstream rendering."""

    seq: int
    time_us: int
    kind: str  # commit | identity | account | sync
    did: str
    rev: str
    frame: bytes
    body: bytes  # the body's DAG-CBOR (frame minus header)
    ops: tuple[SimRecordOp, ...] = ()
    corrupt: bool = False
    stale: bool = False  # made with a rev that is not above the DID's last (stale_every)
    jetstream: tuple[tuple[int, str], ...] = ()  # (time_us, JSON message) per op / event


def tid(time_us: int, clock: int = 0) -> str:
    """A timestamp identifier: 13 sortable base32 characters of ``time_us << 10 | clock``."""
    value = (time_us << 10) | (clock & 0x3FF)
    return "".join(_TID_ALPHABET[(value >> (5 * (12 - i))) & 31] for i in range(13))


def _iso(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1e6, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _record(rng: random.Random, collection: str, time_us: int, dids: list[str]) -> dict:
    created = _iso(time_us)
    target = rng.choice(dids)
    subject_cid = CID.of_block(rng.randbytes(16))
    if collection == "app.bsky.feed.post":
        record: dict = {"$type": collection, "text": f"post {rng.randrange(10**6)} ✓", "createdAt": created, "langs": ["en"]}
        if rng.random() < 0.3:
            record["embed"] = {"$type": "app.bsky.embed.images", "images": [{"alt": "", "image": {
                "$type": "blob", "ref": CID.of_block(rng.randbytes(8), codec=cbor.RAW), "mimeType": "image/jpeg",
                "size": rng.randrange(1, 10**6)}}]}
        return record
    if collection in ("app.bsky.feed.like", "app.bsky.feed.repost"):
        uri = f"at://{target}/app.bsky.feed.post/{tid(time_us - 10**6)}"
        return {"$type": collection, "subject": {"cid": str(subject_cid), "uri": uri}, "createdAt": created}
    if collection == "app.bsky.graph.follow":
        return {"$type": collection, "subject": target, "createdAt": created}
    return {"$type": collection, "displayName": f"user {rng.randrange(1000)}", "description": "", "createdAt": created,
            "avatar": {"$type": "blob", "ref": CID.of_block(rng.randbytes(8), codec=cbor.RAW), "mimeType": "image/png", "size": 1234}}


def _frame(type_: str, body: dict) -> tuple[bytes, bytes]:
    encoded = cbor.encode(body)
    return cbor.encode({"t": type_, "op": 1}) + encoded, encoded


def error_frame(name: str, message: str = "") -> bytes:
    return cbor.encode({"op": -1}) + cbor.encode({"error": name, "message": message})


def info_frame(name: str, message: str = "") -> bytes:
    return cbor.encode({"t": "#info", "op": 1}) + cbor.encode({"name": name, "message": message})


def generate_history(config: AtprotoSimConfig) -> list[SimEvent]:
    """The whole history, deterministically from ``config``."""
    rng = random.Random(config.seed)
    dids = [f"did:plc:sim{config.seed:x}{i:06d}{'a' * 12}"[:32] for i in range(config.dids)]
    existing: dict[str, list[tuple[str, str]]] = {did: [] for did in dids}  # did -> [(collection, rkey)]
    last_rev: dict[str, str] = {}
    events: list[SimEvent] = []
    seq = config.first_seq
    commits = stales = 0
    for i in range(config.total):
        time_us = config.time_base_us + i * config.time_step_us + rng.randrange(500)
        did = rng.choice(dids)
        if config.other_every and i % config.other_every == config.other_every - 1:
            events.append(_other_event(rng, i, seq, time_us, did, last_rev, config))
        else:
            commits += 1
            stale_rev = None
            if config.stale_every and commits % config.stale_every == 0 and did in last_rev:
                stales += 1  # alternately the DID's last rev again and one older than any in the history
                stale_rev = last_rev[did] if stales % 2 else tid(config.time_base_us - 1)
            corrupt = bool(config.corrupt_every) and commits % config.corrupt_every == 0 and stale_rev is None
            # A stale commit is one weir must drop: it leaves the repository's state as it was.
            records = list(existing[did]) if stale_rev else existing[did]
            events.append(_commit(rng, seq, time_us, did, dids, records, last_rev, corrupt, stale_rev, config.ops_per_commit))
        seq += rng.choice((1, 1, 1, 2))
    return events


@functools.cache
def jetstream_dictionary() -> bytes:
    """The simulator's zstd dictionary (as Bluesky publishes its servers'): trained on a fixed
    sample of Jetstream messages with fixed parameters, so every run makes the same bytes."""
    samples = [message.encode() for event in generate_history(AtprotoSimConfig(seed=0, total=300))
               for _, message in event.jetstream]
    return zstandard.train_dictionary(16384, samples, k=64, d=8, dict_id=DICTIONARY_ID, threads=1).as_bytes()


def _commit(rng: random.Random, seq: int, time_us: int, did: str, dids: list[str], existing: list[tuple[str, str]],
            last_rev: dict[str, str], corrupt: bool, stale_rev: str | None = None,
            op_counts: tuple[int, ...] = (1,)) -> SimEvent:
    rev = tid(time_us, rng.randrange(1024))
    if stale_rev is not None:
        rev = stale_rev
    ops: list[SimRecordOp] = []
    tamper = corrupt
    blocks: list[tuple[CID, bytes]] = []
    for index in range(rng.choice(op_counts)):
        roll = rng.random()
        if existing and roll < 0.1:
            collection, rkey = existing.pop(rng.randrange(len(existing)))
            ops.append(SimRecordOp(index=index, action="delete", collection=collection, rkey=rkey, cid=None, record=None, block=None))
            continue
        if existing and roll < 0.2:
            collection, rkey = rng.choice(existing)
            action = "update"
        else:
            collection, rkey = rng.choice(COLLECTIONS), tid(time_us + index, rng.randrange(1024))
            action = "create"
            existing.append((collection, rkey))
        record = _record(rng, collection, time_us, dids)
        block = cbor.encode(record)
        cid = CID.of_block(block)
        tampered, tamper = tamper, False
        if tampered:
            block = cbor.encode({**record, "createdAt": "tampered"})
        blocks.append((cid, block))
        ops.append(SimRecordOp(index=index, action=action, collection=collection, rkey=rkey, cid=cid, record=record,
                               block=block, tampered=tampered))
    mst = cbor.encode({"e": [{"k": f"{op.collection}/{op.rkey}".encode(), "p": 0, "t": None, "v": op.cid} for op in ops if op.cid], "l": None})
    mst_cid = CID.of_block(mst)
    commit = cbor.encode({"did": did, "rev": rev, "sig": rng.randbytes(64), "data": mst_cid, "prev": None, "version": 3})
    commit_cid = CID.of_block(commit)
    car = cbor.encode_car([commit_cid], [(commit_cid, commit), (mst_cid, mst), *blocks])
    body = {
        "seq": seq, "repo": did, "rev": rev, "since": last_rev.get(did), "commit": commit_cid, "blocks": car,
        "ops": [{"action": op.action, "path": f"{op.collection}/{op.rkey}", "cid": op.cid} for op in ops],
        "time": _iso(time_us), "blobs": [], "rebase": False, "tooBig": False, "prevData": mst_cid,
    }
    if stale_rev is None:
        last_rev[did] = rev
    frame, encoded = _frame("#commit", body)
    messages = []
    for op in ops:
        op_time = time_us * 1 + op.index  # unique: events are >= time_step_us - 500 >= 500 µs apart
        commit_json: dict = {"rev": rev, "operation": op.action, "collection": op.collection, "rkey": op.rkey}
        if op.record is not None:
            commit_json["record"] = cbor.to_json(cbor.decode(op.block))  # what the CAR holds, tampered or not
            commit_json["cid"] = str(op.cid)
        messages.append((op_time, json.dumps({"did": did, "time_us": op_time, "kind": "commit", "commit": commit_json})))
    return SimEvent(seq=seq, time_us=time_us, kind="commit", did=did, rev=rev, frame=frame, body=encoded, ops=tuple(ops),
                    corrupt=any(op.tampered for op in ops), stale=stale_rev is not None, jetstream=tuple(messages))


def _other_event(rng: random.Random, i: int, seq: int, time_us: int, did: str, last_rev: dict[str, str],
                 config: AtprotoSimConfig) -> SimEvent:
    kind = ("identity", "account", "sync")[(i // max(1, config.other_every)) % 3]
    time = _iso(time_us)
    rev = ""
    if kind == "identity":
        body: dict = {"seq": seq, "did": did, "time": time, "handle": f"user{rng.randrange(10**4)}.test"}
        js_body = dict(body)
    elif kind == "account":
        body = {"seq": seq, "did": did, "time": time, "active": rng.random() < 0.7}
        if not body["active"]:
            body["status"] = "deactivated"
        js_body = dict(body)
    else:
        rev = tid(time_us, 1023)
        commit = cbor.encode({"did": did, "rev": rev, "sig": bytes(64), "data": CID.of_block(b"root"), "prev": None, "version": 3})
        commit_cid = CID.of_block(commit)
        body = {"seq": seq, "did": did, "time": time, "rev": rev, "blocks": cbor.encode_car([commit_cid], [(commit_cid, commit)])}
        last_rev[did] = rev
        js_body = None  # Jetstream has no sync events
    frame, encoded = _frame(f"#{kind}", body)
    messages = () if js_body is None else ((time_us, json.dumps({"did": did, "time_us": time_us, "kind": kind, kind: js_body})),)
    return SimEvent(seq=seq, time_us=time_us, kind=kind, did=did, rev=rev, frame=frame, body=encoded, jetstream=messages)


@attrs.frozen(slots=True, kw_only=True)
class ExpectedEntry:
    """One entry an ingestor must persist: stream id, kind, data, and routing fields."""

    position: int
    sub: int
    kind: str
    data: bytes
    fields: dict

    @property
    def stream_id(self) -> bytes:
        return b"%d-%d" % (self.position, self.sub)


def expected_records(events: list[SimEvent], *, mode: str = "firehose", collections: tuple[str, ...] = ()) -> tuple[list[ExpectedEntry], list[int]]:
    """What weir must persist from ``events`` (DAG-CBOR form), and the positions of the dead letters.

    ``collections`` (exact NSIDs or ``prefix.*``) filters commit ops; other kinds always pass.
    Commits with a stale rev are left out (:func:`stale_positions` lists them).
    """
    out: list[ExpectedEntry] = []
    dead: list[int] = []
    for fate in _fates(events, mode, collections):
        event, op = fate.event, fate.op
        if fate.verdict == "dead":
            dead.append(fate.position)
        elif fate.verdict != "entry":
            continue
        elif op is None and mode == "firehose":
            out.append(ExpectedEntry(position=event.seq, sub=0, kind=event.kind, data=event.body, fields={"did": event.did}))
        elif op is None:
            body = json.loads(event.jetstream[0][1])[event.kind]
            out.append(ExpectedEntry(position=fate.position, sub=0, kind=event.kind, data=cbor.encode(body), fields={"did": event.did}))
        else:
            fields = {"did": event.did, "collection": op.collection, "rkey": op.rkey, "action": op.action, "rev": event.rev}
            if op.cid is not None:
                fields["cid"] = str(op.cid)
            sub = op.index if mode == "firehose" else 0
            out.append(ExpectedEntry(position=fate.position, sub=sub, kind="commit", data=op.block or b"", fields=fields))
    return out, dead


def stale_positions(events: list[SimEvent], *, mode: str = "firehose", collections: tuple[str, ...] = ()) -> list[int]:
    """Where weir must count a stale rev and drop what it read: firehose seqs (a whole commit) or
    Jetstream time_us (one op's message each)."""
    return [fate.position for fate in _fates(events, mode, collections) if fate.verdict == "stale"]


@attrs.frozen(slots=True)
class _Fate:
    event: SimEvent
    op: SimRecordOp | None  # None: the whole event
    position: int  # seq, or Jetstream's time_us
    verdict: str  # entry | dead | stale | filtered


def _fates(events: list[SimEvent], mode: str, collections: tuple[str, ...]) -> Iterator[_Fate]:
    """What weir's reader makes of each event (firehose) or message (Jetstream), in order.

    The stale-rev check as the readers make it: per DID, a firehose commit must move the rev
    forward (a #sync may repeat it; a dead-lettered commit is never read that far). Jetstream
    sends commits only, one message per op, so an equal rev passes there; an op the filter drops
    is not checked, and a record that does not match its CID is checked (the check comes first).
    """
    def wanted(collection: str) -> bool:
        return not collections or any(collection == c or (c.endswith("*") and collection.startswith(c[:-1])) for c in collections)

    revs: dict[str, str] = {}
    for event in events:
        if mode == "firehose":
            if event.kind == "commit" and any(op.tampered and wanted(op.collection) for op in event.ops):
                yield _Fate(event, None, event.seq, "dead")  # the whole commit: its frame is the dead letter
                continue
            if event.kind in ("commit", "sync"):
                last = revs.get(event.did)
                if last is not None and (event.rev < last or (event.rev == last and event.kind == "commit")):
                    yield _Fate(event, None, event.seq, "stale")
                    continue
                revs[event.did] = event.rev
            if event.kind != "commit":
                yield _Fate(event, None, event.seq, "entry")
                continue
            for op in event.ops:
                yield _Fate(event, op, event.seq, "entry" if wanted(op.collection) else "filtered")
        elif event.kind != "commit":
            if event.jetstream:  # Jetstream has no #sync
                yield _Fate(event, None, event.jetstream[0][0], "entry")
        else:
            for op, (time_us, _) in zip(event.ops, event.jetstream):
                if not wanted(op.collection):
                    yield _Fate(event, op, time_us, "filtered")
                    continue
                last = revs.get(event.did)
                if last is not None and event.rev < last:
                    yield _Fate(event, op, time_us, "stale")
                    continue
                revs[event.did] = event.rev
                yield _Fate(event, op, time_us, "dead" if op.tampered else "entry")


# --------------------------------------------------------------------------- content faults (issue 10)


def forged_seq_frame(event: SimEvent, seq: int) -> bytes:
    """``event``'s frame, well-formed, with another seq (a relay's bogus position)."""
    header, _ = _split_frame(event)
    return header + cbor.encode({**cbor.decode(event.body), "seq": seq})


def oversized_frame(event: SimEvent, size: int) -> bytes:
    """``event`` (a commit) padded with zero bytes in its blocks to at least ``size`` bytes."""
    header, _ = _split_frame(event)
    body = cbor.decode(event.body)
    return header + cbor.encode({**body, "blocks": body["blocks"] + bytes(max(0, size - len(event.frame)))})


def too_many_ops_frame(event: SimEvent, ops: int) -> bytes:
    """``event`` (a commit) with its first op repeated to ``ops`` ops."""
    header, _ = _split_frame(event)
    body = cbor.decode(event.body)
    return header + cbor.encode({**body, "ops": [body["ops"][0]] * ops})


def forged_time_message(message: str, time_us: int) -> str:
    """A Jetstream message with another ``time_us`` (written where Jetstream writes it)."""
    doc = json.loads(message)
    return json.dumps({"did": doc["did"], "time_us": time_us, **{k: v for k, v in doc.items() if k not in ("did", "time_us")}})


def oversized_message(message: str, size: int) -> str:
    """A Jetstream message padded (inside its record or body) to at least ``size`` characters."""
    doc = json.loads(message)
    body = doc[doc["kind"]]
    target = body.get("record", body)
    target["padding"] = "x" * max(0, size - len(message))
    return json.dumps(doc)


def _split_frame(event: SimEvent) -> tuple[bytes, bytes]:
    return event.frame[: len(event.frame) - len(event.body)], event.body
