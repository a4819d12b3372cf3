"""Protobuf wire format, sans-IO: read fields without a schema, and write them.

Reading is for pulling a few routing keys out of a message without decoding it (decoding a whole
HubEvent with generated models costs ~50 µs; this costs a few). Writing is for composing messages
from pre-encoded parts quickly (the simulator). Only what the wire format defines is here: varints,
64-bit, length-delimited and 32-bit fields. Groups (wire types 3/4) are deprecated and rejected.
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT = 0
I64 = 1
LEN = 2
I32 = 5

_MAX_VARINT_BYTES = 10


class WireError(ValueError):
    """The bytes are not a valid protobuf message (the peer's fault); says what and at which offset."""


def read_varint(buf: bytes, pos: int, end: int | None = None) -> tuple[int, int]:
    """Decode the varint at ``pos``; return (value, position after it).

    Raises:
        WireError: truncated, or longer than 10 bytes.
    """
    if end is None:
        end = len(buf)
    if pos >= end:
        raise WireError(f"truncated varint at offset {pos}")
    byte = buf[pos]
    if byte < 0x80:  # the common one-byte case, kept fast
        return byte, pos + 1
    result = byte & 0x7F
    shift = 7
    i = pos + 1
    while True:
        if i >= end:
            raise WireError(f"truncated varint at offset {pos}")
        if i - pos >= _MAX_VARINT_BYTES:
            raise WireError(f"varint longer than 10 bytes at offset {pos}")
        byte = buf[i]
        result |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, i
        shift += 7


def skip_field(buf: bytes, pos: int, wire_type: int, end: int, field: int) -> int:
    """Return the position after the value of a field of ``wire_type`` that starts at ``pos``."""
    if wire_type == VARINT:
        return read_varint(buf, pos, end)[1]
    if wire_type == LEN:
        length, pos = read_varint(buf, pos, end)
        if pos + length > end:
            raise WireError(f"field {field}: length {length} runs past the end at offset {pos}")
        return pos + length
    if wire_type == I64:
        if pos + 8 > end:
            raise WireError(f"field {field}: truncated 64-bit value at offset {pos}")
        return pos + 8
    if wire_type == I32:
        if pos + 4 > end:
            raise WireError(f"field {field}: truncated 32-bit value at offset {pos}")
        return pos + 4
    raise WireError(f"field {field}: unsupported wire type {wire_type} at offset {pos}")


def iter_fields(buf: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field number, wire type, value start, value end) for each field in ``buf[start:end]``.

    For VARINT fields the value span covers the varint bytes; for LEN fields it covers the
    payload only (the length prefix is skipped).
    """
    if end is None:
        end = len(buf)
    pos = start
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise WireError(f"field number 0 at offset {pos}")
        if wire_type == LEN:
            length, value_start = read_varint(buf, pos, end)
            value_end = value_start + length
            if value_end > end:
                raise WireError(f"field {field}: length {length} runs past the end at offset {pos}")
            yield field, wire_type, value_start, value_end
            pos = value_end
        else:
            value_end = skip_field(buf, pos, wire_type, end, field)
            yield field, wire_type, pos, value_end
            pos = value_end


# -- writing ---------------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Encode a non-negative integer below 2**64 as a varint."""
    if value < 0x80:
        if value < 0:
            raise ValueError("varint must be non-negative (encode signed values as 64-bit two's complement)")
        return bytes((value,))
    if value >= 1 << 64:
        raise ValueError("varint must be below 2**64")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return encode_varint((field << 3) | wire_type)


def varint_field(field: int, value: int) -> bytes:
    """A VARINT field; proto3 omits zero values, so callers skip zeros when they mean "default"."""
    return tag(field, VARINT) + encode_varint(value)


def bytes_field(field: int, value: bytes) -> bytes:
    """A LEN field (bytes, string, or an embedded message's encoding)."""
    return tag(field, LEN) + encode_varint(len(value)) + value
