"""Farcaster message validity, sans-IO: the BLAKE3-160 hash and the Ed25519 signature.

Rules (shared/notes/protocols.md §1, the Snapchain node's validation):
- ``hash_scheme`` must be BLAKE3 (1) and ``signature_scheme`` ED25519 (1);
- ``hash`` is the first 20 bytes of BLAKE3 over ``data_bytes`` when present, else over the
  encoded ``data`` field exactly as it appears on the wire;
- ``signature`` is Ed25519 over that 20-byte hash with the public key ``signer``, verified
  strictly by libsodium (through pynacl).

Everything is checked against the bytes on the wire: re-encoding ``data`` can change them (empty
packed fields, field order), and then a valid message would look invalid, or the reverse. The
message is walked with the protowire reader; only ``fid`` and ``type`` are read out of the data.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import attrs
import blake3
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from weir.codecs.protowire import LEN, VARINT, WireError, iter_fields, read_varint

HASH_SCHEME_BLAKE3 = 1
SIGNATURE_SCHEME_ED25519 = 1
HASH_LENGTH = 20
SIGNER_LENGTH = 32
SIGNATURE_LENGTH = 64

# Message fields: number -> (name, wire type)
_MESSAGE_FIELDS = {
    1: ("data", LEN),
    2: ("hash", LEN),
    3: ("hash_scheme", VARINT),
    4: ("signature", LEN),
    5: ("signature_scheme", VARINT),
    6: ("signer", LEN),
    7: ("data_bytes", LEN),
}


class InvalidMessage(ValueError):
    """The message is not a valid Farcaster message; ``reason`` says what is wrong, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen(slots=True, kw_only=True)
class VerifiedMessage:
    """What a valid message proves.

    Attributes:
        hash: the 20-byte BLAKE3 hash (the message's identity).
        signer: the 32-byte Ed25519 public key that signed it.
        fid: the author's fid, from the signed data.
        msg_type: the MessageType value, from the signed data.
        data_bytes: the signed MessageData bytes, exactly as on the wire.
    """

    hash: bytes
    signer: bytes
    fid: int
    msg_type: int
    data_bytes: bytes


def message_hash(data: bytes) -> bytes:
    """BLAKE3-160 of ``data``: the Farcaster message hash."""
    return blake3.blake3(data).digest(HASH_LENGTH)


def verify_message(message_bytes: bytes) -> VerifiedMessage:
    """Check a Message's hash and signature against its wire bytes.

    Args:
        message_bytes: one encoded ``Message``.

    Returns:
        The verified identity of the message.

    Raises:
        InvalidMessage: malformed, wrong scheme, wrong lengths, hash or signature mismatch.
    """
    buf = bytes(message_bytes)
    try:
        spans = _message_spans(buf)
    except WireError as exc:
        raise InvalidMessage(f"not a protobuf Message: {exc}") from exc

    hash_scheme = spans.get("hash_scheme", 0)
    if hash_scheme != HASH_SCHEME_BLAKE3:
        raise InvalidMessage(f"hash_scheme is {hash_scheme}, expected BLAKE3 (1)")
    signature_scheme = spans.get("signature_scheme", 0)
    if signature_scheme != SIGNATURE_SCHEME_ED25519:
        raise InvalidMessage(f"signature_scheme is {signature_scheme}, expected ED25519 (1)")

    data_bytes = spans.get("data_bytes")
    if not data_bytes:  # absent or empty: the node hashes the encoded data field instead
        data_bytes = spans.get("data")
    if not data_bytes:
        raise InvalidMessage("message has neither data_bytes nor data")

    claimed_hash = spans.get("hash", b"")
    if len(claimed_hash) != HASH_LENGTH:
        raise InvalidMessage(f"hash is {len(claimed_hash)} bytes, expected {HASH_LENGTH}")
    signer = spans.get("signer", b"")
    if len(signer) != SIGNER_LENGTH:
        raise InvalidMessage(f"signer is {len(signer)} bytes, expected {SIGNER_LENGTH}")
    signature = spans.get("signature", b"")
    if len(signature) != SIGNATURE_LENGTH:
        raise InvalidMessage(f"signature is {len(signature)} bytes, expected {SIGNATURE_LENGTH}")

    computed = message_hash(data_bytes)
    if computed != claimed_hash:
        raise InvalidMessage(
            f"hash mismatch: message says {claimed_hash.hex()}, BLAKE3-160 of data is {computed.hex()}"
        )
    try:
        crypto_sign_open(signature + computed, signer)
    except (BadSignatureError, ValueError, TypeError) as exc:
        raise InvalidMessage(f"signature does not verify with signer {signer.hex()}") from exc

    try:
        fid, msg_type = _fid_and_type(data_bytes)
    except WireError as exc:
        raise InvalidMessage(f"signed data is not a protobuf MessageData: {exc}") from exc
    return VerifiedMessage(hash=computed, signer=signer, fid=fid, msg_type=msg_type, data_bytes=data_bytes)


def _message_spans(buf: bytes) -> dict[str, Any]:
    """Field values of a Message by name (bytes for LEN fields, int for VARINT), last one wins."""
    out: dict[str, Any] = {}
    for field, wire_type, start, end in iter_fields(buf):
        known = _MESSAGE_FIELDS.get(field)
        if known is None:
            continue  # unknown fields are not part of what is signed
        name, expected = known
        if wire_type != expected:
            raise WireError(f"Message field {field} ({name}) has wire type {wire_type}, expected {expected}")
        if wire_type == LEN:
            out[name] = buf[start:end]
        else:
            out[name] = read_varint(buf, start, end)[0]
    return out


def _fid_and_type(data: bytes) -> tuple[int, int]:
    fid = msg_type = 0
    for field, wire_type, start, end in iter_fields(data):
        if wire_type == VARINT and field in (1, 2):
            value = read_varint(data, start, end)[0]
            if field == 1:
                msg_type = value
            else:
                fid = value
    return fid, msg_type


# HubEvent body fields (number -> the fields of that body that hold a signed Message). A
# MERGE_FAILURE (13) carries a message the node refused, often for being invalid: it is a report,
# not a claim that the message is valid, so it is not verified.
_SIGNED_IN_BODY = {
    3: (1, 2),  # MergeMessageBody: message, deleted_messages
    4: (1,),  # PruneMessageBody: message
    5: (1,),  # RevokeMessageBody: message
    8: (3, 4),  # MergeUserNameProofBody: username_proof_message, deleted_username_proof_message
}


# The body field each HubEventType carries (a body of another field is a lie about the type).
_BODY_OF_TYPE = {1: 3, 2: 4, 3: 5, 6: 8, 9: 11, 10: 13, 11: 16}
_BODY_FIELDS = frozenset(_BODY_OF_TYPE.values())
# The Message a body's routing keys come from: MergeMessage/Prune/Revoke field 1, username proof 3.
_PRIMARY_IN_BODY = {3: 1, 4: 1, 5: 1, 8: 3}


class _Shape(NamedTuple):
    event_type: int
    bodies: list[int]
    messages: list[bytes]  # every signed Message of the body, in wire order
    primary: list[bytes]  # the Message(s) the keys are read from (more than one is refused)


def _shape(event: bytes) -> _Shape:
    event_type = 0
    bodies: list[int] = []
    messages: list[bytes] = []
    primary: list[bytes] = []
    for field, wire_type, start, end in iter_fields(event):
        if field == 1 and wire_type == VARINT:
            event_type = read_varint(event, start, end)[0]
        if field not in _BODY_FIELDS or wire_type != LEN:
            continue
        bodies.append(field)
        wanted = _SIGNED_IN_BODY.get(field, ())
        for inner, inner_type, inner_start, inner_end in iter_fields(event, start, end):
            if inner in wanted and inner_type == LEN:
                messages.append(event[inner_start:inner_end])
                if inner == _PRIMARY_IN_BODY.get(field):
                    primary.append(event[inner_start:inner_end])
    return _Shape(event_type, bodies, messages, primary)


def hub_event_invalidity(event: bytes, keys: Any = None) -> str | None:
    """Why a HubEvent is not valid (one line), or None when it is.

    Valid: one body at most, the body its type names, the keys' message sent once, and every
    signed message verifies. With ``keys`` (a HubEventKeys, as the reader routes the event), the
    fid, type and hash it was routed by must be those of the verified message: a node must not
    credit a signed message to another fid (``data`` saying one fid, the signed ``data_bytes``
    another), nor key an event by an unverified body.
    """
    try:
        shape = _shape(event)
    except WireError as exc:
        return f"not a well-formed HubEvent: {exc}"
    if len(shape.bodies) > 1:
        return f"the event carries {len(shape.bodies)} bodies (fields {', '.join(map(str, shape.bodies))}), one at most"
    if shape.bodies and _BODY_OF_TYPE.get(shape.event_type) != shape.bodies[0]:
        return f"event type {shape.event_type} carries the body of field {shape.bodies[0]}"
    if len(shape.primary) > 1:
        return f"the event's message is sent {len(shape.primary)} times"
    verified: list[VerifiedMessage] = []
    for i, message in enumerate(shape.messages):
        try:
            verified.append(verify_message(message))
        except InvalidMessage as exc:
            which = "its message" if len(shape.messages) == 1 else f"message {i + 1} of {len(shape.messages)}"
            return f"invalid Farcaster message ({which}): {exc.reason}"
    if keys is not None and shape.primary:
        signed = verified[shape.messages.index(shape.primary[0])]
        if (keys.fid, keys.msg_type, keys.msg_hash) != (signed.fid, signed.msg_type, signed.hash):
            return (f"routed by fid {keys.fid}, type {keys.msg_type}, hash {keys.msg_hash.hex()}, but the signed "
                    f"message is fid {signed.fid}, type {signed.msg_type}, hash {signed.hash.hex()}")
    return None



class RoutedBy(NamedTuple):
    """The keys an event is routed by, as ``hub_event_invalidity`` compares them with its message."""

    fid: int
    msg_type: int
    msg_hash: bytes


def hub_event_invalidities(items: list[tuple[bytes, int, int, bytes]]) -> list[str | None]:
    """``hub_event_invalidity`` of each (event, fid, message type, message hash), in order: the
    unit of work a verifier process is handed (plain tuples pickle ~5x faster than key objects;
    a module-level function pickles by name)."""
    return [hub_event_invalidity(event, RoutedBy(fid, msg_type, msg_hash)) for event, fid, msg_type, msg_hash in items]
