"""DAG-CBOR, CIDs and CAR files as the AT Protocol uses them (sans-IO, pure functions).

The hot path (decoding firehose frames) uses libipld, a Rust DAG-CBOR decoder; this module holds
what libipld cannot do or what must not lose information:

- a strict pure-Python DAG-CBOR decoder that keeps CIDs as :class:`CID` (libipld turns tag 42 into
  plain bytes, which is lossy) and reports where a value ends (needed to split a frame in two);
- a canonical DAG-CBOR encoder (the simulator, and Jetstream records in ``dag-cbor`` form);
- the AT Protocol JSON data model (``{"$link": cid}``, ``{"$bytes": base64}``) both ways (records on
  the hot path go through :mod:`weir.codecs.atproto_json`, cbrrr in C, which hands back to this
  module whatever it refuses or could read differently);
- a CAR v1 index: which byte range holds which block, found by CID.

All errors are :class:`CborError` with a one-line message naming what and where (byte offset).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

import attrs
import libipld

DAG_CBOR = 0x71
RAW = 0x55
SHA2_256 = 0x12
MAX_DEPTH = 64


class CborError(ValueError):
    """Malformed DAG-CBOR, CID or CAR data."""


@attrs.frozen(slots=True)
class CID:
    """A content identifier, held as its binary form (``0x01 <codec> <multihash>`` for CIDv1)."""

    raw: bytes

    @classmethod
    def of_block(cls, block: bytes, codec: int = DAG_CBOR) -> CID:
        """The CIDv1 (sha2-256) of ``block``."""
        return cls(bytes((0x01, codec, SHA2_256, 0x20)) + hashlib.sha256(block).digest())

    @classmethod
    def parse(cls, text: str) -> CID:
        """A CID from its base32 multibase string (``bafy…``)."""
        if not text.startswith("b") or len(text) < 2:
            raise CborError(f"CID string {text[:20]!r}: expected base32 multibase ('b…')")
        body = text[1:].upper()
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except ValueError:
            raise CborError(f"CID string {text[:20]!r}: invalid base32") from None
        return cls(raw)

    def __str__(self) -> str:
        return cid_to_str(self.raw)


def cid_to_str(raw: bytes) -> str:
    """The base32 multibase string of a binary CID (``bafyrei…`` for dag-cbor sha2-256)."""
    if len(raw) == 34 and raw[0] == 0x12:  # CIDv0: base58btc by convention, rare in atproto
        return _base58(raw)
    try:
        return libipld.encode_cid(raw)  # ~0.7 µs; base64.b32encode is pure Python on 3.11 (~11 µs)
    except ValueError:
        return "b" + base64.b32encode(raw).decode("ascii").lower().rstrip("=")


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _base58(raw: bytes) -> str:
    number = int.from_bytes(raw, "big")
    out = ""
    while number:
        number, rem = divmod(number, 58)
        out = _B58[rem] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\0"))) + out


# --------------------------------------------------------------------------- encoding


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes((major << 5 | value,))
    if value < 0x100:
        return bytes((major << 5 | 24, value))
    if value < 0x10000:
        return bytes((major << 5 | 25,)) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes((major << 5 | 26,)) + value.to_bytes(4, "big")
    if value < 1 << 64:
        return bytes((major << 5 | 27,)) + value.to_bytes(8, "big")
    raise CborError(f"integer {value} does not fit in 64 bits")


def _key_order(key: str) -> tuple[int, bytes]:
    encoded = key.encode()
    return (len(encoded), encoded)


def encode(value: Any) -> bytes:
    """Canonical DAG-CBOR of ``value`` (dict keys sorted length-first, CIDs as tag 42, no floats)."""
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


def _encode(value: Any, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CborError(f"value nested deeper than {MAX_DEPTH}")
    if value is None:
        out.append(0xF6)
    elif value is True:
        out.append(0xF5)
    elif value is False:
        out.append(0xF4)
    elif isinstance(value, int):
        out += _head(0, value) if value >= 0 else _head(1, -1 - value)
    elif isinstance(value, str):
        data = value.encode()
        out += _head(3, len(data))
        out += data
    elif isinstance(value, (bytes, bytearray, memoryview)):
        out += _head(2, len(value))
        out += value
    elif isinstance(value, CID):
        out += b"\xd8\x2a"
        out += _head(2, len(value.raw) + 1)
        out += b"\x00"
        out += value.raw
    elif isinstance(value, (list, tuple)):
        out += _head(4, len(value))
        for item in value:
            _encode(item, out, depth + 1)
    elif isinstance(value, dict):
        out += _head(5, len(value))
        for key in sorted(value, key=_key_order):
            if not isinstance(key, str):
                raise CborError(f"map key {key!r}: DAG-CBOR map keys must be strings")
            _encode(key, out, depth + 1)
            _encode(value[key], out, depth + 1)
    elif isinstance(value, float):
        raise CborError(f"float {value!r}: the AT Protocol data model has no floats")
    else:
        raise CborError(f"cannot encode {type(value).__name__} as DAG-CBOR")


# --------------------------------------------------------------------------- decoding


def decode(data: bytes) -> Any:
    """Decode exactly one DAG-CBOR value (CIDs as :class:`CID`); trailing bytes are an error."""
    value, end = decode_prefix(data, 0)
    if end != len(data):
        raise CborError(f"{len(data) - end} trailing bytes after the DAG-CBOR value at offset {end}")
    return value


def decode_prefix(data: bytes, offset: int = 0) -> tuple[Any, int]:
    """Decode one DAG-CBOR value starting at ``offset``; return it and the offset just after it."""
    return _decode(data, offset, 0)


def map_entries(data: bytes, offset: int = 0) -> Iterator[tuple[Any, Any]]:
    """The entries of the map at ``offset``, one at a time, as far as ``data`` goes: a field near
    the start of a map can be read from the first bytes of a value too large to keep whole.

    Raises:
        CborError: no map there, or an entry cut off by the end of ``data``.
    """
    major, _, count, pos = _read_head(data, offset)
    if major != 5:
        raise CborError(f"no map at offset {offset}")
    for _ in range(count):
        key, pos = _decode(data, pos, 1)
        value, pos = _decode(data, pos, 1)
        yield key, value


def _read_head(data: bytes, pos: int) -> tuple[int, int, int, int]:
    """(major, info, argument, next offset) of the item head at ``pos``."""
    if pos >= len(data):
        raise CborError(f"truncated DAG-CBOR at offset {pos}")
    first = data[pos]
    major, info = first >> 5, first & 0x1F
    pos += 1
    if info < 24:
        return major, info, info, pos
    if info > 27:
        raise CborError(f"unsupported additional info {info} (indefinite length?) at offset {pos - 1}")
    size = 1 << (info - 24)
    if pos + size > len(data):
        raise CborError(f"truncated DAG-CBOR at offset {pos}")
    arg = int.from_bytes(data[pos : pos + size], "big")
    minimum = 24 if size == 1 else 1 << (4 * size)
    if major != 7 and arg < minimum:
        raise CborError(f"non-minimal length or integer at offset {pos - 1}")
    return major, info, arg, pos + size


def _decode(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise CborError(f"value nested deeper than {MAX_DEPTH} at offset {pos}")
    start = pos
    major, info, arg, pos = _read_head(data, pos)
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major in (2, 3):
        end = pos + arg
        if end > len(data):
            raise CborError(f"string of {arg} bytes at offset {start} runs past the end")
        chunk = bytes(data[pos:end])
        if major == 2:
            return chunk, end
        try:
            return chunk.decode(), end
        except UnicodeDecodeError:
            raise CborError(f"invalid UTF-8 in the text string at offset {start}") from None
    if major == 4:
        if arg > len(data) - pos:
            raise CborError(f"array of {arg} items at offset {start} is longer than the data")
        items = []
        for _ in range(arg):
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos
    if major == 5:
        if arg > len(data) - pos:
            raise CborError(f"map of {arg} entries at offset {start} is longer than the data")
        result: dict[str, Any] = {}
        previous: tuple[int, bytes] | None = None
        for _ in range(arg):
            key_at = pos
            key, pos = _decode(data, pos, depth + 1)
            if not isinstance(key, str):
                raise CborError(f"map key at offset {key_at} is not a string")
            order = _key_order(key)
            if previous is not None and order <= previous:
                raise CborError(f"map keys out of canonical order (or repeated) at offset {key_at}")
            previous = order
            result[key], pos = _decode(data, pos, depth + 1)
        return result, pos
    if major == 6:
        if arg != 42:
            raise CborError(f"tag {arg} at offset {start}: DAG-CBOR allows only tag 42 (CID)")
        inner_at = pos
        inner, pos = _decode(data, pos, depth + 1)
        if not isinstance(inner, bytes) or len(inner) < 2 or inner[0] != 0:
            raise CborError(f"tag 42 at offset {start} does not hold 0x00-prefixed CID bytes (offset {inner_at})")
        return CID(inner[1:]), pos
    # major 7
    if info == 20:
        return False, pos
    if info == 21:
        return True, pos
    if info == 22:
        return None, pos
    if info in (25, 26, 27):
        raise CborError(f"float at offset {start}: the AT Protocol data model has no floats")
    raise CborError(f"unsupported simple value {info} at offset {start}")


# --------------------------------------------------------------------------- JSON data model


def to_json(value: Any) -> Any:
    """The AT Protocol JSON form of a decoded value: CIDs -> ``{"$link"}``, bytes -> ``{"$bytes"}``."""
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_json(item) for item in value]
    if isinstance(value, CID):
        return {"$link": str(value)}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii").rstrip("=")}
    return value


def from_json(value: Any) -> Any:
    """The inverse of :func:`to_json` (JSON records from Jetstream -> DAG-CBOR-ready values)."""
    if isinstance(value, dict):
        if len(value) == 1:
            if isinstance(value.get("$link"), str):
                return CID.parse(value["$link"])
            if isinstance(value.get("$bytes"), str):
                text = value["$bytes"]
                # The data model writes no padding; any run of trailing '=' is read past, as
                # cbrrr reads it, so both codecs accept the same strings.
                unpadded = text.rstrip("=")
                try:
                    return base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
                except ValueError:
                    raise CborError(f"invalid base64 in $bytes {text[:20]!r}") from None
        return {key: from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item) for item in value]
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise CborError(f"float {value!r}: the AT Protocol data model has no floats")
    return value


# --------------------------------------------------------------------------- varints, CIDs, CAR


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next offset) of the unsigned LEB128 varint at ``pos`` (at most 9 bytes)."""
    result = shift = 0
    for index in range(pos, min(pos + 9, len(data))):
        byte = data[index]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, index + 1
        shift += 7
    raise CborError(f"truncated or over-long varint at offset {pos}")


def read_cid(data: bytes, pos: int) -> tuple[bytes, int]:
    """The binary CID at ``pos`` (v1, or a v0 bare sha2-256 multihash) and the offset after it."""
    if data[pos : pos + 2] == b"\x12\x20":  # CIDv0
        end = pos + 34
    else:
        version, p = read_varint(data, pos)
        if version != 1:
            raise CborError(f"CID version {version} at offset {pos}")
        _codec, p = read_varint(data, p)
        _hash, p = read_varint(data, p)
        length, p = read_varint(data, p)
        end = p + length
    if end > len(data):
        raise CborError(f"CID at offset {pos} runs past the end")
    return bytes(data[pos:end]), end


def encode_car(roots: list[CID], blocks: list[tuple[CID, bytes]]) -> bytes:
    """A CAR v1 file: header ``{roots, version: 1}`` then each block as varint length, CID, data."""
    header = encode({"roots": roots, "version": 1})
    out = bytearray(encode_varint(len(header)) + header)
    for cid, data in blocks:
        out += encode_varint(len(cid.raw) + len(data))
        out += cid.raw
        out += data
    return bytes(out)


def index_car(car: bytes) -> dict[bytes, tuple[int, int]]:
    """Map each block's binary CID to the (start, end) of its data in ``car``.

    Raises:
        CborError: a malformed header (not ``version: 1``) or block framing.
    """
    header_len, pos = read_varint(car, 0)
    end = pos + header_len
    if header_len == 0 or end > len(car):
        raise CborError(f"CAR header length {header_len} does not fit in {len(car)} bytes")
    header = decode(car[pos:end])
    if not isinstance(header, dict) or header.get("version") != 1:
        raise CborError("CAR header is not {version: 1, roots: [...]}")
    blocks: dict[bytes, tuple[int, int]] = {}
    pos = end
    size = len(car)
    while pos < size:
        section_at = pos
        length, pos = read_varint(car, pos)
        section_end = pos + length
        if section_end > size:
            raise CborError(f"CAR block at offset {section_at} ({length} bytes) runs past the end")
        cid, data_start = read_cid(car, pos)
        if data_start > section_end:
            raise CborError(f"CAR block at offset {section_at}: CID longer than the block")
        blocks[cid] = (data_start, section_end)
        pos = section_end
    return blocks


def find_block(car: bytes, cid: bytes) -> bytes | None:
    """The block of ``cid`` in ``car`` if it is there and its sha-256 matches, else None.

    Fast path for a few lookups in a small CAR: find the CID's bytes where a block section could
    start (a varint section length right before them, the section inside the data) and accept the
    section only if the block hashes to the CID. Content addressing makes a false match
    impossible, so the rest of the CAR need not be walked. A None answer is followed by
    :func:`index_car`, which finds the block or says precisely what is wrong.

    At most ``len(car)`` bytes are hashed in all: a CAR that repeats the CID behind long section
    lengths would otherwise cost a hash of up to the whole CAR per repetition (2 MB of them took
    15 s); past that budget the answer is None and the linear walk of :func:`index_car` decides.
    """
    digest = _sha256_digest(cid)
    if digest is None:  # verify_block accepts no block for this CID: no search can find one
        return None
    size = len(car)
    width = len(cid)
    budget = size
    at = car.find(cid)
    while at > 0:
        length = car[at - 1]
        if length < 0x80:  # the last byte of a varint section length, if a section starts here
            start = at - 1
            while True:  # the varint 1, 2 or 3 bytes long, its earlier bytes continuation bytes (>= 0x80)
                if width < length and at + length <= size:
                    budget -= length - width
                    if budget < 0:
                        return None
                    block = car[at + width : at + length]
                    if hashlib.sha256(block).digest() == digest:  # what verify_block checks, its digest taken once
                        return block
                start -= 1
                if start < 0 or at - start > 3 or car[start] < 0x80:
                    break
                length = (length << 7) | (car[start] & 0x7F)
        at = car.find(cid, at + 1)
    return None


def _sha256_digest(cid: bytes) -> bytes | None:
    """The sha-256 digest ``cid`` names, as :func:`verify_block` reads it; None if it names none."""
    if len(cid) == 34 and cid[0] == 0x12:
        return cid[2:]
    if len(cid) == 36 and cid[0] == 0x01 and cid[2] == SHA2_256 and cid[3] == 0x20:
        return cid[4:]
    return None


def verify_block(cid: bytes, block: bytes) -> str | None:
    """None if ``block`` hashes to ``cid``; otherwise why not (one line)."""
    digest = _sha256_digest(cid)
    if digest is None:
        if len(cid) >= 4 and cid[0] == 0x01:
            return f"CID {cid_to_str(cid)} uses an unsupported hash"
        return f"unsupported CID {cid.hex()[:16]}"
    if hashlib.sha256(block).digest() != digest:
        return f"block does not match its CID {cid_to_str(cid)} (sha-256 differs)"
    return None
