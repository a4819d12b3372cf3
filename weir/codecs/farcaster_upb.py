"""A HubEvent's routing keys through the ``protobuf`` package's C decoder (upb), when it is exact.

upb parses a HubEvent and hands out the keys in ~1.6 µs, against ~3.5-6 µs for weir's pure-Python
scanner (docs/performance.md). It is used only where its reading is the scanner's: the event must
serialize back to exactly its own bytes (a length check is not enough: a negative enum sent in 5
bytes grows on re-encoding and can hide a field sent twice, which shrinks). That rules out what
the two could read differently: a field sent twice (upb merges messages and keeps the last scalar,
the scanner takes the last body whole), non-canonical varints, a value wider than its field (upb
truncates a uint32, the scanner keeps 64 bits), two bodies of the oneof, fields out of order.
Node encoders (prost sorts fields by tag, a oneof at its lowest tag) write what upb writes: every
Snapchain golden vector in tests/fixtures re-encodes to its own bytes. What upb refuses
(truncations, bad wire types inside a body, text that is not UTF-8) and the rare shapes below go
to the scanner, which gives the keys or the error that explains the dead letter.

One known difference: an unknown field of the long-deprecated group wire types (3, 4) is skipped
by upb, as by prost and every protobuf library, and refused by weir's scanner. Such an event is
routed instead of dead-lettered; verification (``farcaster.verify``) still refuses a signed
message that carries one, and checks the keys against the signed message.

Rare shapes left to the scanner: a Message with ``data_bytes`` and no ``data`` (keys come from the
serialized bytes), BLOCK_CONFIRMED (per-type counts, and prost writes its body before the fields
numbered below it, which upb does not), negative enum values (upb
sign-extends, the scanner reads the unsigned varint), an event without an id.

Sans-IO: bytes in, a tuple out. The descriptors are weir's own .proto files, compiled by
``python protos/generate.py`` into ``weir/protos/snapchain.binpb`` (tests/test_farcaster_upb.py checks
them against the betterproto2 models).
"""

from __future__ import annotations

import importlib.resources
from typing import Any

try:  # protobuf >= 4.21 decodes in C (upb); without the package the scanner does all the work
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from google.protobuf.message import DecodeError
except ImportError:  # pragma: no cover - protobuf is a dependency; this keeps a broken install working
    descriptor_pb2 = None

KeyTuple = tuple[int, int, int, int, int, int, int, bytes]
"""(event type, id, shard, block number, timestamp, fid, message type, message hash)."""

_MESSAGE_BODIES = ("merge_message_body", "prune_message_body", "revoke_message_body", "merge_failure")


def _load_hub_event() -> Any:
    if descriptor_pb2 is None:  # pragma: no cover
        return None
    raw = importlib.resources.files("weir.protos").joinpath("snapchain.binpb").read_bytes()
    pool = descriptor_pool.DescriptorPool()  # private: never clashes with a user's own Snapchain protos
    for file in descriptor_pb2.FileDescriptorSet.FromString(raw).file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("HubEvent"))


HubEvent = _load_hub_event()


def upb_keys(buf: bytes) -> KeyTuple | None:
    """The keys of a canonical, common-shaped HubEvent; None leaves ``buf`` to the scanner."""
    try:
        event = HubEvent.FromString(buf)
    except DecodeError:
        return None
    if not event.id or event.SerializeToString() != buf:
        return None
    event_type = event.type
    # Most events merge a message: HasField costs half what WhichOneof does.
    body = "merge_message_body" if event.HasField("merge_message_body") else event.WhichOneof("body")
    fid = msg_type = 0
    msg_hash = b""
    if body in _MESSAGE_BODIES:
        # An absent message or data reads as an empty one (fid, type 0, hash b""), which are the
        # keys of one without them: HasField is asked only where that is not enough.
        message = getattr(event, body).message
        data = message.data
        fid, msg_type = data.fid, data.type
        if not (fid or msg_type) and not message.HasField("data") and message.HasField("data_bytes"):
            return None
        msg_hash = message.hash
    elif body == "merge_on_chain_event_body":
        fid = event.merge_on_chain_event_body.on_chain_event.fid
    elif body == "merge_username_proof_body":
        # As the scanner reads it: the proof's message when it names a fid, else the proof's fid.
        proof_body = event.merge_username_proof_body
        message = proof_body.username_proof_message
        data = message.data
        fid = data.fid
        if fid:
            msg_type, msg_hash = data.type, message.hash
        elif not message.HasField("data") and message.HasField("data_bytes"):
            return None
        else:
            fid = proof_body.username_proof.fid
    elif body is not None:  # BLOCK_CONFIRMED
        return None
    if event_type < 0 or msg_type < 0:
        return None
    return event_type, event.id, event.shard_index, event.block_number, event.timestamp, fid, msg_type, msg_hash


def available() -> bool:
    """Whether the C decoder is installed (the scanner alone does the work otherwise)."""
    return HubEvent is not None
