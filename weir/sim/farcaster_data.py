"""Deterministic, realistic Snapchain shard logs: signed messages in blocks of HubEvents.

Everything here is a pure function of the configuration and the shard: the same
``SnapchainSimConfig`` yields byte-identical events in any process, which lets a checker
recompute what the simulator offered (``generate_offered``) instead of asking it.

Speed matters (the benchmark streams 200,000+ events): MessageData and every envelope around it
are written with the protowire writer from pre-encoded tags, never with the typed encoder; the
per-event cost is dominated by the Ed25519 signature (libsodium, ~21 µs).

Block layout, as the Snapchain node commits a block (farcasterxyz/snapchain,
``src/storage/store/engine.rs``, ``ShardEngine::commit_and_emit_events``, and
``src/storage/store/account/event.rs``, ``HubEventIdGenerator::generate_id``):

- the block's BLOCK_CONFIRMED event has seq 0, its other events seq 1, 2, … in commit order, and
  event id = ``(block_number << 14) | seq``;
- BLOCK_CONFIRMED **counts itself**: ``total_events = events.len() + 1`` ("+1 for
  BLOCK_CONFIRMED itself") and ``event_counts_by_type`` holds ``BLOCK_CONFIRMED: 1`` besides the
  counts of the block's other events;
- every event of the block carries the block's number, shard and timestamp.

``max_block_event_seqnum`` (the shard-0 block event sequence the shard block was built on) has
no meaning here; the simulator puts the block's ordinal in it (1, 2, …), which is monotonic.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Callable, Iterable

import attrs
import blake3
from nacl.bindings import crypto_sign, crypto_sign_seed_keypair

from weir.codecs.farcaster_gaps import SEQ_BITS
from weir.codecs.farcaster_keys import (
    BLOCK_CONFIRMED,
    FARCASTER_EPOCH_UNIX,
    MERGE_FAILURE,
    MERGE_MESSAGE,
    MERGE_ON_CHAIN_EVENT,
    MERGE_USERNAME_PROOF,
    PRUNE_MESSAGE,
    REVOKE_MESSAGE,
)
from weir.codecs.protowire import encode_varint
from weir.sim.farcaster_faults import Injection

DEFAULT_GENESIS_TIME = 1735689600 - FARCASTER_EPOCH_UNIX
"""Farcaster time of the first simulated block (2025-01-01T00:00:00Z): fixed, for determinism."""

MAX_EVENTS_PER_BLOCK = (1 << SEQ_BITS) - 1  # seq 1..16383 after BLOCK_CONFIRMED at 0
FRAMINGS = ("packed", "one")  # Subscribe messages per HTTP/2 DATA frame: many | one (SnapchainSimConfig.framing)

# MessageType
CAST_ADD = 1
CAST_REMOVE = 2
REACTION_ADD = 3
REACTION_REMOVE = 4
LINK_ADD = 5
LINK_REMOVE = 6
VERIFICATION_ADD_ETH_ADDRESS = 7
USER_DATA_ADD = 11
USERNAME_PROOF = 12

NETWORK_MAINNET = 1

# HubEvent body field (oneof) for each event type, as a pre-encoded LEN tag
_BODY_TAG = {
    MERGE_MESSAGE: b"\x1a",  # 3
    PRUNE_MESSAGE: b"\x22",  # 4
    REVOKE_MESSAGE: b"\x2a",  # 5
    MERGE_USERNAME_PROOF: b"\x42",  # 8
    MERGE_ON_CHAIN_EVENT: b"\x5a",  # 11
    MERGE_FAILURE: b"\x6a",  # 13
    BLOCK_CONFIRMED: b"\x82\x01",  # 16
}
# MessageData body field (oneof) for each message type, as a pre-encoded LEN tag
_DATA_BODY_TAG = {
    CAST_ADD: b"\x2a",  # 5 cast_add_body
    CAST_REMOVE: b"\x32",  # 6 cast_remove_body
    REACTION_ADD: b"\x3a",  # 7 reaction_body
    REACTION_REMOVE: b"\x3a",
    VERIFICATION_ADD_ETH_ADDRESS: b"\x4a",  # 9 verification_add_address_body
    USER_DATA_ADD: b"\x62",  # 12 user_data_body
    LINK_ADD: b"\x72",  # 14 link_body
    LINK_REMOVE: b"\x72",
    USERNAME_PROOF: b"\x7a",  # 15 username_proof_body
}

_CORRUPT_BODY = b"\x0a\x06\xff\xff\xff\xff\xff\xff"
"""A body whose Message (field 1) is a truncated varint: no parser accepts it."""

_WORDS = (
    "gm onchain frames builders shipping today farcaster protocol warpcast channel zora base "
    "optimism hub snapchain shard block cast reply thread recast like follow degen art music "
    "photo sunset coffee weekend launch mint wallet bridge rollup latency throughput retention "
    "cursor replay stream event backpressure supervisor actor restart chaos proxy redis python "
    "trio grpc protobuf blake3 ed25519 signature verify hash the a and of to in is it for on with "
    "this that we you they just really very good great new hello world community devs ship it"
).split()
_USER_DATA_TYPES = (1, 2, 3, 5, 6, 7, 8, 9, 10)
_CHANNELS = ("farcaster", "dev", "base", "zora", "music", "art", "memes", "founders", "python")

# (weight, kind) of the non-BLOCK_CONFIRMED events; kinds are methods of ShardEventGenerator
_EVENT_MIX = (
    (34, "cast_add"),
    (3, "cast_remove"),
    (28, "reaction_add"),
    (3, "reaction_remove"),
    (12, "link_add"),
    (2, "link_remove"),
    (8, "user_data_add"),
    (3, "verification_add"),
    (3, "prune"),
    (2, "on_chain"),
    (2, "username_proof"),
)


def _positive(_: object, attribute: attrs.Attribute, value: int) -> None:  # type: ignore[type-arg]
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value}")


def _non_negative(_: object, attribute: attrs.Attribute, value: float) -> None:  # type: ignore[type-arg]
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


@attrs.frozen(kw_only=True)
class SnapchainSimConfig:
    """Everything that determines what the simulated Snapchain offers.

    Attributes:
        shards: number of user shards (1..shards); shard 0 (the block chain) is never served.
        seed: the same seed (and other fields) gives byte-identical events.
        rate: live events/s per shard, released in whole blocks; 0 = as fast as possible.
        history: events per shard that exist before the server starts (replayable at once).
        total: events per shard after which production stops (history included); the stream
            stays open, idle. None = produce forever.
        retention: keep at most this many events per shard (whole blocks are pruned, oldest
            first); None = keep all. An older ``from_id`` silently starts at the oldest kept.
        corrupt_every: every Nth non-BLOCK_CONFIRMED event of a shard gets a body that is not a
            valid message (type, id, block, shard and timestamp stay readable); None = never.
        fids_per_shard: how many distinct users post on each shard.
        max_block_events: non-BLOCK_CONFIRMED events per block are drawn from 0..this.
        first_block: block number of each shard's first block.
        genesis_time: Farcaster time of the first block; each block is 1 s after the previous.
        pregenerate: generate all ``total`` events when the server starts instead of lazily
            (for benchmarks: the offered rate is then not bounded by signing).
        injections: content faults served over the socket (weir.sim.farcaster_faults): a bogus
            id, an oversized event, a forged or altered message, given Message bytes.
        framing: how Subscribe messages go into HTTP/2 DATA frames: ``packed`` (every ready
            message in one write, many per frame, as a tonic node does while a subscriber catches
            up) or ``one`` (one message per DATA frame, as a live tail at a low rate receives).
        live_after_subscribe: hold live production (what comes after ``history``) until the first
            Subscribe, so the live phase's clock starts when a client listens, not when the
            server starts (the chaos suite: its load then runs under the fault schedule however
            long the ingestor takes to start).
    """

    shards: int = attrs.field(default=2, validator=_positive)
    seed: int = 1
    rate: float = attrs.field(default=1000.0, validator=_non_negative)
    history: int = attrs.field(default=0, validator=_non_negative)
    total: int | None = attrs.field(default=None, validator=_positive)
    retention: int | None = attrs.field(default=None, validator=_positive)
    corrupt_every: int | None = attrs.field(default=None, validator=_positive)
    fids_per_shard: int = attrs.field(default=200, validator=_positive)
    max_block_events: int = attrs.field(default=40, validator=_positive)
    first_block: int = attrs.field(default=1, validator=_positive)
    genesis_time: int = DEFAULT_GENESIS_TIME
    pregenerate: bool = False
    injections: tuple[Injection, ...] = ()
    framing: str = attrs.field(default="packed", validator=attrs.validators.in_(FRAMINGS))
    live_after_subscribe: bool = False

    def __attrs_post_init__(self) -> None:
        if self.total is not None and self.history > self.total:
            raise ValueError(f"history ({self.history}) cannot exceed total ({self.total})")
        if self.max_block_events > MAX_EVENTS_PER_BLOCK:
            raise ValueError(f"max_block_events must be <= {MAX_EVENTS_PER_BLOCK}")


def shard_for_fid(fid: int, num_shards: int) -> int:
    """The user shard (1..num_shards) that holds ``fid``'s messages.

    First 4 bytes (big-endian) of SHA-256 of the fid as a 4-byte big-endian integer, mod N, + 1.
    """
    digest = hashlib.sha256(fid.to_bytes(4, "big")).digest()
    return int.from_bytes(digest[:4], "big") % num_shards + 1


def event_id(block_number: int, seq: int) -> int:
    return (block_number << SEQ_BITS) | seq


# -- wire helpers (pre-encoded tags + protowire varints) ---------------------------------------

_SMALL_VARINTS = [encode_varint(i) for i in range(1 << 14)]  # every length and most enums


def _v(value: int) -> bytes:
    return _SMALL_VARINTS[value] if value < 16384 else encode_varint(value)


def _ld(tag: bytes, value: bytes) -> bytes:
    """A LEN field from its pre-encoded tag."""
    n = len(value)
    return tag + (_SMALL_VARINTS[n] if n < 16384 else encode_varint(n)) + value


def _cast_id(fid: int, hash_: bytes) -> bytes:
    return b"\x08" + _v(fid) + _ld(b"\x12", hash_)


def compose_hub_event(
    event_type: int, id_: int, body: bytes, block_number: int, shard: int, timestamp: int
) -> bytes:
    """A HubEvent's bytes from its parts (``body`` is the encoded body message for the type)."""
    return (
        b"\x08" + _v(event_type)
        + b"\x10" + _v(id_)
        + _ld(_BODY_TAG[event_type], body)
        + b"\x60" + _v(block_number)  # 12 block_number
        + b"\x70" + _v(shard)  # 14 shard_index
        + b"\x78" + _v(timestamp)  # 15 timestamp
    )


@attrs.define(eq=False)
class _Signer:
    public_key: bytes
    secret_key: bytes


@attrs.define(eq=False)
class _FidState:
    """What a user has said recently (for removes, replies, prunes)."""

    casts: deque[tuple[bytes, bytes]] = attrs.Factory(lambda: deque(maxlen=16))  # (hash, message)
    reactions: deque[tuple[bytes, bytes, int]] = attrs.Factory(lambda: deque(maxlen=16))  # (target, message, type)
    links: deque[tuple[int, bytes]] = attrs.Factory(lambda: deque(maxlen=16))  # (target, message)
    messages: deque[bytes] = attrs.Factory(lambda: deque(maxlen=8))


class ShardEventGenerator:
    """Produces one shard's blocks, in order, deterministically.

    Each call to ``next_block`` returns the block's events as ``(id, type, payload)`` tuples,
    BLOCK_CONFIRMED first; ``None`` once ``total`` events were produced. Blocks end exactly at
    ``history`` and at ``total`` so that both are whole blocks.
    """

    def __init__(self, config: SnapchainSimConfig, shard: int) -> None:
        if not 1 <= shard <= config.shards:
            raise ValueError(f"shard {shard} is not a user shard (1..{config.shards})")
        self.config = config
        self.shard = shard
        self.produced = 0
        self.blocks = 0
        self._rng = random.Random(f"weir-sim/{config.seed}/shard/{shard}")
        self._cuts = sorted({c for c in (config.history, config.total) if c})
        self._user_events = 0  # non-BLOCK_CONFIRMED events so far (for corrupt_every)
        self._fids = self._pick_fids()
        self._signers: dict[int, _Signer] = {}
        self._state: dict[int, _FidState] = {}
        self._recent_casts: deque[tuple[int, bytes]] = deque(maxlen=256)  # (fid, hash), any user
        self._seen: set[bytes] = set()  # message hashes: every message is distinct
        total_weight = sum(w for w, _ in _EVENT_MIX)
        self._mix: list[tuple[float, Callable[[int], tuple[int, bytes]]]] = []
        acc = 0.0
        for weight, kind in _EVENT_MIX:
            acc += weight / total_weight
            self._mix.append((acc, getattr(self, "_" + kind)))

    # -- blocks ------------------------------------------------------------------------------

    def next_block(self) -> list[tuple[int, int, bytes]] | None:
        config = self.config
        if config.total is not None and self.produced >= config.total:
            return None
        rng = self._rng
        room = MAX_EVENTS_PER_BLOCK + 1
        for cut in self._cuts:
            if cut > self.produced:
                room = min(room, cut - self.produced)
                break
        n_user = min(rng.randint(0, config.max_block_events), room - 1)
        block_number = config.first_block + self.blocks
        self.blocks += 1
        timestamp = config.genesis_time + self.blocks - 1
        shard = self.shard
        events: list[tuple[int, int, bytes]] = []
        counts: dict[int, int] = {BLOCK_CONFIRMED: 1}  # the node counts BLOCK_CONFIRMED itself
        mix = self._mix
        for seq in range(1, n_user + 1):
            r = rng.random()
            for threshold, make in mix:
                if r < threshold:
                    break
            event_type, body = make(timestamp)
            self._user_events += 1
            if config.corrupt_every and self._user_events % config.corrupt_every == 0:
                body = _CORRUPT_BODY
            counts[event_type] = counts.get(event_type, 0) + 1
            id_ = (block_number << SEQ_BITS) | seq
            events.append((id_, event_type, compose_hub_event(event_type, id_, body, block_number, shard, timestamp)))
        confirmed = (
            b"\x08" + _v(block_number)
            + b"\x10" + _v(shard)
            + b"\x18" + _v(timestamp)
            + _ld(b"\x22", rng.randbytes(32))
            + b"\x28" + _v(n_user + 1)
            + b"".join(_ld(b"\x32", b"\x08" + _v(t) + b"\x10" + _v(c)) for t, c in sorted(counts.items()))
            + b"\x38" + _v(self.blocks)
        )
        id_ = block_number << SEQ_BITS
        events.insert(0, (id_, BLOCK_CONFIRMED, compose_hub_event(BLOCK_CONFIRMED, id_, confirmed, block_number, shard, timestamp)))
        self.produced += len(events)
        return events

    # -- users -------------------------------------------------------------------------------

    def _pick_fids(self) -> list[int]:
        rng = random.Random(f"weir-sim/{self.config.seed}/fids/{self.shard}")
        fids: list[int] = []
        seen: set[int] = set()
        while len(fids) < self.config.fids_per_shard:
            fid = rng.randint(1, 1_200_000)
            if fid not in seen and shard_for_fid(fid, self.config.shards) == self.shard:
                seen.add(fid)
                fids.append(fid)
        return fids

    def _signer(self, fid: int) -> _Signer:
        signer = self._signers.get(fid)
        if signer is None:
            seed = blake3.blake3(f"weir-sim/{self.config.seed}/signer/{fid}".encode()).digest()
            public_key, secret_key = crypto_sign_seed_keypair(seed)
            signer = self._signers[fid] = _Signer(public_key, secret_key)
        return signer

    def _user(self) -> tuple[int, _FidState]:
        fid = self._fids[int(self._rng.random() * len(self._fids))]
        state = self._state.get(fid)
        if state is None:
            state = self._state[fid] = _FidState()
        return fid, state

    def _sign(self, fid: int, msg_type: int, timestamp: int, body: bytes) -> tuple[bytes, bytes]:
        """Build, hash and sign a MessageData; return (hash, Message bytes)."""
        prefix = b"\x08" + _v(msg_type) + b"\x10" + _v(fid) + b"\x18"
        suffix = b"\x20\x01" + _ld(_DATA_BODY_TAG[msg_type], body)
        while True:  # a byte-identical message would be a duplicate: move it a second earlier
            data = prefix + _v(timestamp) + suffix
            hash_ = blake3.blake3(data).digest(20)
            if hash_ not in self._seen:
                break
            timestamp -= 1
        self._seen.add(hash_)
        signer = self._signer(fid)
        signature = crypto_sign(hash_, signer.secret_key)[:64]
        message = (
            _ld(b"\x0a", data)
            + _ld(b"\x12", hash_)
            + b"\x18\x01"
            + _ld(b"\x22", signature)
            + b"\x28\x01"
            + _ld(b"\x32", signer.public_key)
        )
        if self._rng.random() < 0.9:  # most nodes send data_bytes beside data
            message += _ld(b"\x3a", data)
        return hash_, message

    def _message_time(self, block_time: int) -> int:
        return block_time - int(self._rng.random() * 8)

    # -- event kinds: each returns (HubEventType, encoded body) --------------------------------

    def _merge(self, fid: int, state: _FidState, message: bytes, deleted: tuple[bytes, ...] = ()) -> tuple[int, bytes]:
        state.messages.append(message)
        body = _ld(b"\x0a", message) + b"".join(_ld(b"\x12", d) for d in deleted)
        return MERGE_MESSAGE, body

    def _text(self) -> str:
        rng = self._rng
        n = rng.randint(1, 28)
        return " ".join(_WORDS[int(rng.random() * len(_WORDS))] for _ in range(n))[:300]

    def _cast_add(self, block_time: int) -> tuple[int, bytes]:
        rng = self._rng
        fid, state = self._user()
        text = self._text().encode()
        body = b""
        r = rng.random()
        if r < 0.25:  # mentions at word boundaries
            k = rng.randint(1, 2)
            mentions = [self._fids[int(rng.random() * len(self._fids))] for _ in range(k)]
            spaces = [i for i, c in enumerate(text) if c == 0x20] or [len(text)]
            positions = sorted(rng.choice(spaces) for _ in range(k))
            body += _ld(b"\x12", b"".join(_v(m) for m in mentions))
        parent = rng.random()
        if parent < 0.3 and self._recent_casts:  # a reply (parent oneof: cast id)
            parent_fid, parent_hash = self._recent_casts[int(rng.random() * len(self._recent_casts))]
            body += _ld(b"\x1a", _cast_id(parent_fid, parent_hash))
        body += _ld(b"\x22", text)
        if r < 0.25:
            body += _ld(b"\x2a", b"".join(_v(p) for p in positions))
        e = rng.random()
        if e < 0.2:
            body += _ld(b"\x32", _ld(b"\x0a", f"https://example.com/post/{rng.randint(1, 10**9)}".encode()))
        elif e < 0.27 and self._recent_casts:
            quoted_fid, quoted_hash = self._recent_casts[int(rng.random() * len(self._recent_casts))]
            body += _ld(b"\x32", _ld(b"\x12", _cast_id(quoted_fid, quoted_hash)))
        if 0.3 <= parent < 0.4:  # a channel post (parent oneof: url)
            channel = _CHANNELS[int(rng.random() * len(_CHANNELS))]
            body += _ld(b"\x3a", f"https://farcaster.xyz/~/channel/{channel}".encode())
        hash_, message = self._sign(fid, CAST_ADD, self._message_time(block_time), body)
        state.casts.append((hash_, message))
        self._recent_casts.append((fid, hash_))
        return self._merge(fid, state, message)

    def _cast_remove(self, block_time: int) -> tuple[int, bytes]:
        fid, state = self._user()
        if not state.casts:
            return self._cast_add(block_time)
        target_hash, target = state.casts.popleft()
        _, message = self._sign(fid, CAST_REMOVE, block_time, _ld(b"\x0a", target_hash))
        return self._merge(fid, state, message, (target,))

    def _reaction_add(self, block_time: int) -> tuple[int, bytes]:
        rng = self._rng
        fid, state = self._user()
        reaction_type = 1 if rng.random() < 0.8 else 2
        if self._recent_casts and rng.random() < 0.95:
            target_fid, target_hash = self._recent_casts[int(rng.random() * len(self._recent_casts))]
            target = _ld(b"\x12", _cast_id(target_fid, target_hash))
        else:
            target = _ld(b"\x1a", f"https://example.com/item/{rng.randint(1, 10**6)}".encode())
        _, message = self._sign(fid, REACTION_ADD, self._message_time(block_time), b"\x08" + _v(reaction_type) + target)
        state.reactions.append((target, message, reaction_type))
        return self._merge(fid, state, message)

    def _reaction_remove(self, block_time: int) -> tuple[int, bytes]:
        fid, state = self._user()
        if not state.reactions:
            return self._reaction_add(block_time)
        target, added, reaction_type = state.reactions.popleft()
        _, message = self._sign(fid, REACTION_REMOVE, block_time, b"\x08" + _v(reaction_type) + target)
        return self._merge(fid, state, message, (added,))

    def _link_add(self, block_time: int) -> tuple[int, bytes]:
        fid, state = self._user()
        target_fid = self._rng.randint(1, 1_200_000)
        _, message = self._sign(fid, LINK_ADD, self._message_time(block_time), _ld(b"\x0a", b"follow") + b"\x18" + _v(target_fid))
        state.links.append((target_fid, message))
        return self._merge(fid, state, message)

    def _link_remove(self, block_time: int) -> tuple[int, bytes]:
        fid, state = self._user()
        if not state.links:
            return self._link_add(block_time)
        target_fid, added = state.links.popleft()
        _, message = self._sign(fid, LINK_REMOVE, block_time, _ld(b"\x0a", b"follow") + b"\x18" + _v(target_fid))
        return self._merge(fid, state, message, (added,))

    def _user_data_add(self, block_time: int) -> tuple[int, bytes]:
        rng = self._rng
        fid, state = self._user()
        kind = _USER_DATA_TYPES[int(rng.random() * len(_USER_DATA_TYPES))]
        if kind == 1:
            value = f"https://i.example.com/{fid}/{rng.randint(1, 10**6)}.png"
        elif kind == 6:
            value = f"user{fid}"
        elif kind in (5, 10):
            value = f"https://example.com/{fid}"
        else:
            value = self._text()[:100]
        _, message = self._sign(fid, USER_DATA_ADD, self._message_time(block_time), b"\x08" + _v(kind) + _ld(b"\x12", value.encode()))
        return self._merge(fid, state, message)

    def _verification_add(self, block_time: int) -> tuple[int, bytes]:
        rng = self._rng
        fid, state = self._user()
        body = _ld(b"\x0a", rng.randbytes(20)) + _ld(b"\x12", rng.randbytes(65)) + _ld(b"\x1a", rng.randbytes(32))
        _, message = self._sign(fid, VERIFICATION_ADD_ETH_ADDRESS, self._message_time(block_time), body)
        return self._merge(fid, state, message)

    def _prune(self, block_time: int) -> tuple[int, bytes]:
        """A message pruned for storage limits: the event carries the earlier message again."""
        fid, state = self._user()
        if len(state.messages) < 2:
            return self._cast_add(block_time)
        return PRUNE_MESSAGE, _ld(b"\x0a", state.messages.popleft())

    def _on_chain(self, block_time: int) -> tuple[int, bytes]:
        rng = self._rng
        fid, _ = self._user()
        r = rng.random()
        if r < 0.5:  # SIGNER add: key, key_type 1, event_type ADD
            kind, body = 1, _ld(b"\x4a", _ld(b"\x0a", self._signer(fid).public_key) + b"\x10\x01\x18\x01" + _ld(b"\x22", rng.randbytes(64)) + b"\x28\x01")
        elif r < 0.8:  # STORAGE_RENT: payer, units, expiry
            kind, body = 4, _ld(b"\x62", _ld(b"\x0a", rng.randbytes(20)) + b"\x10" + _v(rng.randint(1, 5)) + b"\x18" + _v(block_time + FARCASTER_EPOCH_UNIX + 365 * 86400))
        else:  # ID_REGISTER: to, event_type REGISTER, recovery address
            kind, body = 3, _ld(b"\x5a", _ld(b"\x0a", rng.randbytes(20)) + b"\x10\x01" + _ld(b"\x22", rng.randbytes(20)))
        event = (
            b"\x08" + _v(kind)
            + b"\x10\x0a"  # chain_id 10 (OP mainnet)
            + b"\x18" + _v(120_000_000 + rng.randint(0, 10_000_000))
            + _ld(b"\x22", rng.randbytes(32))
            + b"\x28" + _v(block_time + FARCASTER_EPOCH_UNIX)
            + _ld(b"\x32", rng.randbytes(32))
            + b"\x38" + _v(rng.randint(0, 200))
            + b"\x40" + _v(fid)
            + body
            + b"\x68" + _v(rng.randint(0, 100))
        )
        return MERGE_ON_CHAIN_EVENT, _ld(b"\x0a", event)

    def _username_proof(self, block_time: int) -> tuple[int, bytes]:
        rng = self._rng
        fid, state = self._user()
        name = f"user{fid}".encode()
        fields = (
            b"\x08" + _v(block_time + FARCASTER_EPOCH_UNIX)  # proofs carry unix time
            + _ld(b"\x12", name)
            + _ld(b"\x1a", rng.randbytes(20))
            + _ld(b"\x22", rng.randbytes(65))
            + b"\x28" + _v(fid)
        )
        if rng.random() < 0.7:  # an fname proof from the name server: no message
            return MERGE_USERNAME_PROOF, _ld(b"\x0a", fields + b"\x30\x01")
        ens = (
            b"\x08" + _v(block_time + FARCASTER_EPOCH_UNIX) + _ld(b"\x12", name + b".eth")
            + _ld(b"\x1a", rng.randbytes(20)) + _ld(b"\x22", rng.randbytes(65)) + b"\x28" + _v(fid) + b"\x30\x02"
        )
        _, message = self._sign(fid, USERNAME_PROOF, self._message_time(block_time), ens)
        state.messages.append(message)
        return MERGE_USERNAME_PROOF, _ld(b"\x0a", ens) + _ld(b"\x1a", message)


def offered_digest(events: Iterable[tuple[int, bytes]]) -> str:
    """SHA-256 over the bytes of ``events`` in order: what the simulator's record of what it offered
    holds, and what the chaos checker compares its regeneration with."""
    digest = hashlib.sha256()
    for _, payload in events:
        digest.update(payload)
    return digest.hexdigest()


def generate_offered(config: SnapchainSimConfig, shard: int, count: int) -> list[tuple[int, bytes]]:
    """The first ``count`` events the simulator offers on ``shard`` with ``config``, as (id, bytes).

    Recomputes them from the configuration alone: a checker in another process gets exactly the
    bytes the server sent (fewer if ``total`` ends the shard first).
    """
    generator = ShardEventGenerator(config, shard)
    out: list[tuple[int, bytes]] = []
    while len(out) < count:
        block = generator.next_block()
        if block is None:
            break
        out.extend((id_, payload) for id_, _, payload in block)
    return out[:count]
