"""Typed decoding of Snapchain HubEvents (betterproto2) and a JSON-safe view of them (sans-IO).

The hot path never calls this: it keeps events as wire bytes and reads routing keys with
``farcaster_keys``. Typed decoding is for events that passed the filter, sinks that want fields,
the CLI and tests.

Newer network messages than our .proto subset decode without loss: betterproto2 turns an unknown
enum value into a nameless member that still compares equal to its int (shown here as that int),
and keeps unknown fields' bytes in ``_unknown_fields`` (re-emitted by ``bytes(msg)``; shown here
field by field).
"""

from __future__ import annotations

import enum
from struct import error as StructError
from typing import Any

import betterproto2

from weir.codecs.farcaster_keys import FARCASTER_EPOCH_UNIX
from weir.codecs.protowire import LEN, VARINT, WireError, iter_fields, read_varint
from weir.protos.snapchain import BlockConfirmedBody, HubEvent, Message, MessageData


# Which messages carry a Farcaster-epoch ``timestamp`` field (UserNameProof and OnChainEvent
# timestamps are unix seconds already and are left alone).
_FARCASTER_TIME_MESSAGES = (HubEvent, MessageData, BlockConfirmedBody)


def farcaster_to_unix(timestamp: int) -> int:
    """Farcaster-epoch seconds to unix seconds."""
    return timestamp + FARCASTER_EPOCH_UNIX


def unix_to_farcaster(timestamp: int) -> int:
    """Unix seconds to Farcaster-epoch seconds."""
    return timestamp - FARCASTER_EPOCH_UNIX


def decode_hub_event(payload: bytes) -> HubEvent:
    """Decode a HubEvent's wire bytes into the typed model.

    Raises:
        WireError: the bytes are not a HubEvent (malformed protobuf, invalid UTF-8 in a string).
    """
    return _parse(HubEvent, payload)


def decode_message(message_bytes: bytes) -> Message:
    """Decode a Farcaster Message's wire bytes into the typed model.

    Raises:
        WireError: as ``decode_hub_event``.
    """
    return _parse(Message, message_bytes)


def hub_event_to_json(payload: bytes) -> dict[str, Any]:
    """A JSON-safe dict of a HubEvent.

    Bytes become ``0x``-hex strings, enums their names (the int when our protos do not know the
    value), map keys strings, Farcaster-epoch timestamps get a ``timestamp_unix`` sibling, and
    fields our protos do not know appear under ``_unknown_fields`` as
    ``{"field", "wire_type", "value"}``. Unset optional and oneof fields are left out.

    Raises:
        WireError: as ``decode_hub_event``.
    """
    return message_to_json(decode_hub_event(payload))


def message_to_json(message: betterproto2.Message) -> dict[str, Any]:
    """A JSON-safe dict of any decoded betterproto2 message (see ``hub_event_to_json``)."""
    meta = message._betterproto
    out: dict[str, Any] = {}
    for name in meta.sorted_field_names:
        value = getattr(message, name)
        if value is None:
            continue
        out[name] = _value_to_json(value)
    if isinstance(message, _FARCASTER_TIME_MESSAGES) and "timestamp" in out:
        out["timestamp_unix"] = farcaster_to_unix(out["timestamp"])
    unknown = message._unknown_fields
    if unknown:
        out["_unknown_fields"] = _unknown_to_json(unknown)
    return out


def _value_to_json(value: Any) -> Any:
    if isinstance(value, betterproto2.Message):
        return message_to_json(value)
    if isinstance(value, enum.Enum):
        return value.name or int(value)  # a nameless member is a value our protos do not know
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, list):
        return [_value_to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(_value_to_json(k)): _value_to_json(v) for k, v in value.items()}
    return value  # int, str, bool, float


def _unknown_to_json(raw: bytes) -> list[dict[str, Any]] | str:
    fields: list[dict[str, Any]] = []
    try:
        for field, wire_type, start, end in iter_fields(raw):
            value: Any
            if wire_type == VARINT:
                value = read_varint(raw, start, end)[0]
            else:
                value = "0x" + raw[start:end].hex()
            fields.append({"field": field, "wire_type": wire_type, "value": value})
    except WireError:
        return "0x" + raw.hex()
    return fields


def _parse(cls: Any, data: bytes) -> Any:
    data = bytes(data)
    _check_wire(cls, data, 0, len(data))
    try:
        return cls.parse(data)
    except (ValueError, EOFError, UnicodeDecodeError, IndexError, TypeError, KeyError, StructError) as exc:
        raise WireError(f"not a valid {cls.__name__}: {exc}") from exc


def _check_wire(cls: Any, buf: bytes, start: int, end: int) -> None:
    """Walk the wire structure of ``cls`` and its known sub-messages strictly.

    betterproto2 is lenient with malformed input (it reads a truncated varint at the end of a
    message as the end of the message), so the structure is checked with protowire first.
    """
    meta = cls._betterproto
    for field, wire_type, value_start, value_end in iter_fields(buf, start, end):
        name = meta.field_name_by_number.get(field)
        if name is None or wire_type != LEN:
            continue
        if meta.meta_by_field_name[name].proto_type == betterproto2.TYPE_MESSAGE:
            _check_wire(meta.cls_by_field[name], buf, value_start, value_end)

