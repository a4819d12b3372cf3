"""Content faults the simulated Snapchain node can serve: what a buggy or hostile node sends.

An :class:`Injection` names a shard, the index of one of its generated events (0 = the first
BLOCK_CONFIRMED) and what to do there:

- ``insert``: serve ``payload`` (raw HubEvent bytes, e.g. one whose id reads as 2^60) right after
  that event; the original stays;
- ``message``: replace that MERGE_MESSAGE's Message with ``payload`` (Message bytes, e.g. a
  conformance fixture), keeping its id, block and shard;
- ``forge``: flip a bit of that MERGE_MESSAGE's signature;
- ``alter``: change the signed data after signing (a cast edited in transit): hash no longer matches;
- ``oversize``: pad that event with an unknown field to ``size`` bytes, keeping its id.

Replaced events are not valid any more: :func:`valid_after_faults` says which generated events an
ingestor should still persist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs

from weir.codecs.protowire import LEN, encode_varint, iter_fields

ACTIONS = ("insert", "message", "forge", "alter", "oversize")
_PADDING_FIELD = 1000  # unknown to every HubEvent reader: skipped by length


@attrs.frozen(kw_only=True)
class Injection:
    shard: int
    at: int
    action: str = attrs.field(validator=attrs.validators.in_(ACTIONS))
    payload: bytes = b""
    size: int = 0


def _replace_span(buf: bytes, start: int, end: int, value: bytes) -> bytes:
    """``buf`` with the LEN value at ``buf[start:end]`` replaced (its length prefix rewritten)."""
    prefix_start = start - 1
    while prefix_start > 0 and buf[prefix_start - 1] & 0x80:
        prefix_start -= 1
    return buf[:prefix_start] + encode_varint(len(value)) + value + buf[end:]


def _rewrite_message(event: bytes, rewrite: Callable[[bytes], bytes]) -> bytes:
    """``event`` (a MERGE_MESSAGE) with its Message (field 3 -> body field 1) replaced by ``rewrite(message)``."""
    for field, wire_type, start, end in iter_fields(event):
        if field == 3 and wire_type == LEN:
            body = event[start:end]
            for inner, inner_type, inner_start, inner_end in iter_fields(body):
                if inner == 1 and inner_type == LEN:
                    message = rewrite(body[inner_start:inner_end])
                    return _replace_span(event, start, end, _replace_span(body, inner_start, inner_end, message))
    raise ValueError("not a MERGE_MESSAGE with a message")


def with_message(event: bytes, message: bytes) -> bytes:
    """``event`` carrying ``message`` instead of its own (the enclosing lengths rewritten)."""
    return _rewrite_message(event, lambda _: message)


def forge(event: bytes) -> bytes:
    """The event with the last bit of its message's signature flipped."""

    def flip(message: bytes) -> bytes:
        for field, wire_type, start, end in iter_fields(message):
            if field == 4 and wire_type == LEN:
                return message[: end - 1] + bytes([message[end - 1] ^ 1]) + message[end:]
        raise ValueError("the message has no signature")

    return _rewrite_message(event, flip)


def alter(event: bytes) -> bytes:
    """The event with its message's signed data changed after signing (data and data_bytes alike)."""

    def edit(message: bytes) -> bytes:
        out = message
        for field, wire_type, start, end in iter_fields(message):
            if field in (1, 7) and wire_type == LEN and end > start:
                out = out[: end - 1] + bytes([out[end - 1] ^ 1]) + out[end:]
        return out

    return _rewrite_message(event, edit)


def oversize(event: bytes, size: int) -> bytes:
    """The event padded with an unknown field to exactly ``size`` bytes (at least its own size plus 3)."""
    key = encode_varint((_PADDING_FIELD << 3) | LEN)
    for prefix in range(1, 6):  # the padding's length prefix takes 1..5 bytes
        room = max(0, size - len(event) - len(key) - prefix)
        if len(encode_varint(room)) == prefix:
            break
    return event + key + encode_varint(room) + b"\x00" * room


def apply(event: bytes, injection: Injection) -> bytes:
    """The event served in place of ``event`` (``insert`` leaves it as it is)."""
    if injection.action == "message":
        return with_message(event, injection.payload)
    if injection.action == "forge":
        return forge(event)
    if injection.action == "alter":
        return alter(event)
    if injection.action == "oversize":
        return oversize(event, injection.size)
    return event


def valid_after_faults(events: Iterable[tuple[int, bytes]], shard: int, injections: Iterable[Injection]) -> list[tuple[int, bytes]]:
    """The generated ``events`` an ingestor must persist: all but those an injection replaced."""
    replaced = {i.at for i in injections if i.shard == shard and i.action != "insert"}
    return [event for index, event in enumerate(events) if index not in replaced]
