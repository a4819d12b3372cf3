"""Pull a HubEvent's routing keys out of its wire bytes without decoding it (sans-IO).

Filtering and persisting need only a handful of fields: the event type and id, the shard and block,
the message's fid, type and hash, and for BLOCK_CONFIRMED the per-block counts used to detect missed
events. This scanner walks just the paths to those fields and skips everything else by length.
Field numbers: shared/notes/protocols.md §1 (and protos/*.proto).
"""

from __future__ import annotations

from typing import NamedTuple

import attrs

from weir.codecs.farcaster_upb import available as _upb_available
from weir.codecs.farcaster_upb import upb_keys
from weir.codecs.protowire import LEN, VARINT, WireError, read_varint, skip_field

upb_available = _upb_available()

FARCASTER_EPOCH_UNIX = 1609459200
"""2021-01-01T00:00:00Z: Farcaster timestamps count seconds from here."""

# HubEventType values
MERGE_MESSAGE = 1
PRUNE_MESSAGE = 2
REVOKE_MESSAGE = 3
MERGE_USERNAME_PROOF = 6
MERGE_ON_CHAIN_EVENT = 9
MERGE_FAILURE = 10
BLOCK_CONFIRMED = 11

HUB_EVENT_TYPES: dict[int, str] = {
    0: "NONE",
    MERGE_MESSAGE: "MERGE_MESSAGE",
    PRUNE_MESSAGE: "PRUNE_MESSAGE",
    REVOKE_MESSAGE: "REVOKE_MESSAGE",
    MERGE_USERNAME_PROOF: "MERGE_USERNAME_PROOF",
    MERGE_ON_CHAIN_EVENT: "MERGE_ON_CHAIN_EVENT",
    MERGE_FAILURE: "MERGE_FAILURE",
    BLOCK_CONFIRMED: "BLOCK_CONFIRMED",
}
HUB_EVENT_TYPE_BY_NAME: dict[str, int] = {name: value for value, name in HUB_EVENT_TYPES.items()}

MESSAGE_TYPES: dict[int, str] = {
    1: "CAST_ADD",
    2: "CAST_REMOVE",
    3: "REACTION_ADD",
    4: "REACTION_REMOVE",
    5: "LINK_ADD",
    6: "LINK_REMOVE",
    7: "VERIFICATION_ADD_ETH_ADDRESS",
    8: "VERIFICATION_REMOVE",
    11: "USER_DATA_ADD",
    12: "USERNAME_PROOF",
    13: "FRAME_ACTION",
    14: "LINK_COMPACT_STATE",
    15: "LEND_STORAGE",
}
MESSAGE_TYPE_BY_NAME: dict[str, int] = {name: value for value, name in MESSAGE_TYPES.items()}

# HubEvent body fields that hold a body whose field 1 is a Message
_MESSAGE_BODIES = frozenset({3, 4, 5, 13})
_USERNAME_PROOF_BODY = 8
_ON_CHAIN_BODY = 11
_BLOCK_CONFIRMED_BODY = 16
_BLOCK_CONFIRMED_HEAD = bytes([1 << 3 | VARINT, BLOCK_CONFIRMED])  # type = BLOCK_CONFIRMED, as field 1


@attrs.frozen(slots=True)
class BlockCounts:
    """What a BLOCK_CONFIRMED event announces about its block."""

    block_number: int
    total_events: int
    counts_by_type: dict[int, int]


class HubEventKeys(NamedTuple):
    """The routing keys of one HubEvent; zero / empty where the event has no such field.

    A NamedTuple, not an attrs class: one is made per event on the hot path, and a tuple is made
    in ~0.4 µs against ~1.1 µs for a frozen attrs class of nine fields.
    """

    event_type: int
    event_id: int
    shard: int
    block_number: int
    timestamp: int  # Farcaster epoch seconds
    fid: int
    msg_type: int
    msg_hash: bytes
    block: BlockCounts | None


_keys_from_tuple = tuple.__new__  # HubEventKeys from a tuple of its nine fields, without the call


class _Unusual(Exception):
    """The fast path met something it leaves to the strict scanner."""


def scan_hub_event(buf: bytes) -> HubEventKeys:
    """Scan a HubEvent's bytes for its routing keys.

    The protobuf package's C decoder reads a canonical event of the common shape (exactly as the
    scanners would: weir/codecs/farcaster_upb.py); else a Python fast path handles the common
    shape (one-byte tags, a message body); anything else, including every malformed input, goes
    through the strict scanner, which gives the same keys or the error that says what is wrong.

    Raises:
        WireError: the bytes are not a well-formed HubEvent (truncated, bad varint, bad wire type,
            or no id).
    """
    # BLOCK_CONFIRMED (type 11, written first) is left to the Python path at once: upb never
    # reads it exactly (weir/codecs/farcaster_upb.py), so trying it first only costs.
    if upb_available and not buf.startswith(_BLOCK_CONFIRMED_HEAD):
        found = upb_keys(buf)
        if found is not None:
            return _keys_from_tuple(HubEventKeys, (*found, None))
    try:
        return _scan_common(buf)
    except (_Unusual, IndexError, WireError):
        return scan_hub_event_strict(buf)


def _scan_common(buf: bytes) -> HubEventKeys:
    """The fast path: one-byte tags and lengths read inline (the hot loop of every pipeline).

    Every length is checked against its enclosing end; whatever is not the common shape raises
    _Unusual (or IndexError past the buffer) and the strict scanner takes over.
    """
    end = len(buf)
    pos = 0
    event_type = event_id = shard = block_number = timestamp = fid = msg_type = 0
    msg_hash = b""
    block = None
    saw_id = False
    while pos < end:
        key = buf[pos]
        pos += 1
        if key >= 0x80:  # field >= 16: BLOCK_CONFIRMED's body (0x82 0x01), anything else is rare
            if key != 0x82 or buf[pos] != 0x01:
                raise _Unusual
            length = buf[pos + 1]
            if length < 0x80:
                pos += 2
            else:
                length, pos = read_varint(buf, pos + 1, end)
            stop = pos + length
            if stop > end:
                raise _Unusual
            block = _block_confirmed_common(buf, pos, stop)
            pos = stop
            continue
        wire_type = key & 7
        if wire_type == VARINT:
            value = buf[pos]
            if value < 0x80:
                pos += 1
            else:
                value, pos = read_varint(buf, pos, end)
            field = key >> 3
            if field == 1:
                event_type = value
            elif field == 2:
                event_id = value
                saw_id = True
            elif field == 12:
                block_number = value
            elif field == 14:
                shard = value
            elif field == 15:
                timestamp = value
        elif wire_type == LEN:
            length = buf[pos]
            if length < 0x80:
                pos += 1
            else:
                length, pos = read_varint(buf, pos, end)
            stop = pos + length
            if stop > end:
                raise _Unusual
            field = key >> 3
            if field in _MESSAGE_BODIES:
                fid, msg_type, msg_hash = _message_in_body_common(buf, pos, stop)
            elif field == _ON_CHAIN_BODY:
                fid = _on_chain_fid_common(buf, pos, stop)
            elif field == _USERNAME_PROOF_BODY:
                raise _Unusual
            pos = stop
        else:
            raise _Unusual
    if pos != end or not saw_id:
        raise _Unusual
    return HubEventKeys(event_type, event_id, shard, block_number, timestamp, fid, msg_type, msg_hash, block)


def _on_chain_fid_common(buf: bytes, pos: int, end: int) -> int:
    """MergeOnChainEventBody → on_chain_event (field 1) → fid (field 8), read as the strict
    scanner reads it (the first of each, nothing after it looked at). upb never reads these
    exactly: prost writes OnChainEvent's oneof body before tx_index (13), upb after it."""
    while pos < end:
        key = buf[pos]
        pos += 1
        if key == 0x0A:  # on_chain_event
            length = buf[pos]
            if length < 0x80:
                pos += 1
            else:
                length, pos = read_varint(buf, pos, end)
            stop = pos + length
            if stop > end:
                raise _Unusual
            while pos < stop:
                key = buf[pos]
                pos += 1
                if key >= 0x80:
                    raise _Unusual
                if key & 7 == VARINT:
                    value, pos = read_varint(buf, pos, stop)  # bounded: the fid is returned at once
                    if key == 0x40:  # fid
                        return value
                elif key & 7 == LEN:
                    length = buf[pos]
                    if length < 0x80:
                        pos += 1
                    else:
                        length, pos = read_varint(buf, pos, stop)
                    pos += length
                else:
                    raise _Unusual
            if pos != stop:
                raise _Unusual
            return 0
        if key >= 0x80:
            raise _Unusual
        if key & 7 == VARINT:
            pos = pos + 1 if buf[pos] < 0x80 else read_varint(buf, pos, end)[1]
        elif key & 7 == LEN:
            length = buf[pos]
            if length < 0x80:
                pos += 1
            else:
                length, pos = read_varint(buf, pos, end)
            pos += length
        else:
            raise _Unusual
    if pos != end:
        raise _Unusual
    return 0


def _block_confirmed_common(buf: bytes, pos: int, end: int) -> BlockCounts:
    """BlockConfirmedBody in its common shape (one-byte tags, map entries of a key and a value):
    one per block, so it is worth a fast path (~4x cheaper than the strict scanner's)."""
    block_number = total = 0
    counts: dict[int, int] = {}
    while pos < end:
        key = buf[pos]
        pos += 1
        if key == 0x32:  # field 6: one entry of event_counts_by_type
            entry_end = pos + 1 + buf[pos]
            if buf[pos] >= 0x80 or entry_end > end:
                raise _Unusual
            pos += 1
            count_key = count = 0
            while pos < entry_end:
                entry_key = buf[pos]
                value = buf[pos + 1]
                if value < 0x80:
                    pos += 2
                else:
                    value, pos = read_varint(buf, pos + 1, entry_end)
                if entry_key == 0x08:
                    count_key = value - (1 << 64) if value >= 1 << 63 else value  # int32, sign-extended
                elif entry_key == 0x10:
                    count = value
                else:
                    raise _Unusual
            if pos != entry_end:
                raise _Unusual
            counts[count_key] = count
        elif key >= 0x80:
            raise _Unusual
        elif key & 7 == VARINT:
            value = buf[pos]
            if value < 0x80:
                pos += 1
            else:
                value, pos = read_varint(buf, pos, end)
            if key == 0x08:
                block_number = value
            elif key == 0x28:
                total = value
        elif key & 7 == LEN:
            length = buf[pos]
            if length < 0x80:
                pos += 1
            else:
                length, pos = read_varint(buf, pos, end)
            pos += length
        else:
            raise _Unusual
    if pos != end:
        raise _Unusual
    return BlockCounts(block_number, total, counts)


def _message_in_body_common(buf: bytes, pos: int, end: int) -> tuple[int, int, bytes]:
    while pos < end:
        key = buf[pos]
        pos += 1
        if key >= 0x80:
            raise _Unusual
        wire_type = key & 7
        if wire_type == LEN:
            length = buf[pos]
            if length < 0x80:
                pos += 1
            else:
                length, pos = read_varint(buf, pos, end)
            stop = pos + length
            if stop > end:
                raise _Unusual
            if key == 0x0A:  # field 1: the Message
                return _message_common(buf, pos, stop)
            pos = stop
        elif wire_type == VARINT:  # read, not skipped to its last byte: one over 10 bytes is the strict scanner's error
            pos = pos + 1 if buf[pos] < 0x80 else read_varint(buf, pos, end)[1]
        else:
            raise _Unusual
    if pos != end:
        raise _Unusual
    return 0, 0, b""


def _message_common(buf: bytes, pos: int, end: int) -> tuple[int, int, bytes]:
    msg_hash = b""
    data_start = data_bytes_start = -1
    data_end = data_bytes_end = -1
    while pos < end:
        key = buf[pos]
        pos += 1
        if key >= 0x80:
            raise _Unusual
        wire_type = key & 7
        if wire_type == LEN:
            length = buf[pos]
            if length < 0x80:
                pos += 1
            else:
                length, pos = read_varint(buf, pos, end)
            stop = pos + length
            if stop > end:
                raise _Unusual
            if key == 0x0A:  # data
                data_start, data_end = pos, stop
            elif key == 0x12:  # hash
                msg_hash = buf[pos:stop]
            elif key == 0x3A:  # data_bytes
                data_bytes_start, data_bytes_end = pos, stop
            pos = stop
        elif wire_type == VARINT:  # read, not skipped to its last byte: one over 10 bytes is the strict scanner's error
            pos = pos + 1 if buf[pos] < 0x80 else read_varint(buf, pos, end)[1]
        else:
            raise _Unusual
    if pos != end:
        raise _Unusual
    if data_start < 0:  # as the strict scanner: data, else data_bytes
        data_start, data_end = data_bytes_start, data_bytes_end
    fid = msg_type = 0
    if data_start >= 0:
        pos, end = data_start, data_end
        while pos < end:
            key = buf[pos]
            pos += 1
            if key >= 0x80:
                raise _Unusual
            wire_type = key & 7
            if wire_type == VARINT:
                value = buf[pos]
                if value < 0x80:
                    pos += 1
                else:
                    value, pos = read_varint(buf, pos, end)
                if key == 0x08:
                    msg_type = value
                elif key == 0x10:
                    fid = value
            elif wire_type == LEN:
                length = buf[pos]
                if length < 0x80:
                    pos += 1
                else:
                    length, pos = read_varint(buf, pos, end)
                pos += length
            else:
                raise _Unusual
        if pos != end:
            raise _Unusual
    return fid, msg_type, msg_hash


def scan_hub_event_strict(buf: bytes) -> HubEventKeys:
    """The reference scanner: every field through the bounds-checked wire reader."""
    end = len(buf)
    pos = 0
    event_type = event_id = shard = block_number = timestamp = 0
    fid = msg_type = 0
    msg_hash = b""
    block: BlockCounts | None = None
    saw_id = False
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        field = key >> 3
        wire_type = key & 7
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos, end)
            if field == 1:
                event_type = value
            elif field == 2:
                event_id = value
                saw_id = True
            elif field == 12:
                block_number = value
            elif field == 14:
                shard = value
            elif field == 15:
                timestamp = value
        elif wire_type == LEN:
            length, start = read_varint(buf, pos, end)
            stop = start + length
            if stop > end:
                raise WireError(f"HubEvent field {field}: length {length} runs past the end")
            if field in _MESSAGE_BODIES:
                fid, msg_type, msg_hash = _scan_message_body(buf, start, stop, 1)
            elif field == _USERNAME_PROOF_BODY:
                fid, msg_type, msg_hash = _scan_username_proof_body(buf, start, stop)
            elif field == _ON_CHAIN_BODY:
                fid = _scan_on_chain_body(buf, start, stop)
            elif field == _BLOCK_CONFIRMED_BODY:
                block = _scan_block_confirmed(buf, start, stop)
            pos = stop
        else:
            pos = skip_field(buf, pos, wire_type, end, field)
    if not saw_id:
        raise WireError("HubEvent has no id (field 2)")
    return HubEventKeys(event_type, event_id, shard, block_number, timestamp, fid, msg_type, msg_hash, block)


def _scan_message_body(buf: bytes, start: int, end: int, message_field: int) -> tuple[int, int, bytes]:
    """Find the Message in a body (at ``message_field``) and scan it."""
    pos = start
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        field, wire_type = key >> 3, key & 7
        if field == message_field and wire_type == LEN:
            length, pos = read_varint(buf, pos, end)
            if pos + length > end:
                raise WireError("Message runs past the end of its body")
            return scan_message(buf, pos, pos + length)
        pos = skip_field(buf, pos, wire_type, end, field)
    return 0, 0, b""


def scan_message(buf: bytes, start: int = 0, end: int | None = None) -> tuple[int, int, bytes]:
    """Return (fid, message type, hash) of the Message in ``buf[start:end]``.

    The fid and type come from ``data`` (field 1), or from ``data_bytes`` (field 7) when a node
    sends only the serialized form.
    """
    if end is None:
        end = len(buf)
    pos = start
    fid = msg_type = 0
    msg_hash = b""
    data_span: tuple[int, int] | None = None
    data_bytes_span: tuple[int, int] | None = None
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        field, wire_type = key >> 3, key & 7
        if wire_type == LEN:
            length, vstart = read_varint(buf, pos, end)
            vend = vstart + length
            if vend > end:
                raise WireError(f"Message field {field}: length {length} runs past the end")
            if field == 1:
                data_span = (vstart, vend)
            elif field == 2:
                msg_hash = buf[vstart:vend]
            elif field == 7:
                data_bytes_span = (vstart, vend)
            pos = vend
        else:
            pos = skip_field(buf, pos, wire_type, end, field)
    span = data_span or data_bytes_span
    if span is not None:
        fid, msg_type = _scan_message_data(buf, span[0], span[1])
    return fid, msg_type, msg_hash


def _scan_message_data(buf: bytes, start: int, end: int) -> tuple[int, int]:
    pos = start
    fid = msg_type = 0
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        field, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos, end)
            if field == 1:
                msg_type = value
            elif field == 2:
                fid = value
        else:
            pos = skip_field(buf, pos, wire_type, end, field)
    return fid, msg_type


def _scan_username_proof_body(buf: bytes, start: int, end: int) -> tuple[int, int, bytes]:
    """MergeUserNameProofBody: the proof message (field 3) if any, else the proof's fid (field 1 → 5)."""
    fid, msg_type, msg_hash = _scan_message_body(buf, start, end, 3)
    if fid:
        return fid, msg_type, msg_hash
    pos = start
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        field, wire_type = key >> 3, key & 7
        if field == 1 and wire_type == LEN:
            length, pos = read_varint(buf, pos, end)
            return _varint_field(buf, pos, min(pos + length, end), 5), 0, b""
        pos = skip_field(buf, pos, wire_type, end, field)
    return 0, 0, b""


def _scan_on_chain_body(buf: bytes, start: int, end: int) -> int:
    """MergeOnChainEventBody → on_chain_event (field 1) → fid (field 8)."""
    pos = start
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        field, wire_type = key >> 3, key & 7
        if field == 1 and wire_type == LEN:
            length, pos = read_varint(buf, pos, end)
            if pos + length > end:
                raise WireError("OnChainEvent runs past the end of its body")
            return _varint_field(buf, pos, pos + length, 8)
        pos = skip_field(buf, pos, wire_type, end, field)
    return 0


def _varint_field(buf: bytes, start: int, end: int, wanted: int) -> int:
    pos = start
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        field, wire_type = key >> 3, key & 7
        if field == wanted and wire_type == VARINT:
            return read_varint(buf, pos, end)[0]
        pos = skip_field(buf, pos, wire_type, end, field)
    return 0


def _scan_block_confirmed(buf: bytes, start: int, end: int) -> BlockCounts:
    pos = start
    block_number = total = 0
    counts: dict[int, int] = {}
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        field, wire_type = key >> 3, key & 7
        if field == 1 and wire_type == VARINT:
            block_number, pos = read_varint(buf, pos, end)
        elif field == 5 and wire_type == VARINT:
            total, pos = read_varint(buf, pos, end)
        elif field == 6 and wire_type == LEN:
            length, pos = read_varint(buf, pos, end)
            entry_end = pos + length
            if entry_end > end:
                raise WireError("BlockConfirmedBody map entry runs past the end")
            k = v = 0
            while pos < entry_end:
                ekey, pos = read_varint(buf, pos, entry_end)
                if ekey == 0x08:
                    k, pos = read_varint(buf, pos, entry_end)
                    if k >= 1 << 63:  # int32 keys are sign-extended to 64 bits on the wire
                        k -= 1 << 64
                elif ekey == 0x10:
                    v, pos = read_varint(buf, pos, entry_end)
                else:
                    pos = skip_field(buf, pos, ekey & 7, entry_end, ekey >> 3)
            counts[k] = v
        else:
            pos = skip_field(buf, pos, wire_type, end, field)
    return BlockCounts(block_number, total, counts)
