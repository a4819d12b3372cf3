"""AT Protocol records between DAG-CBOR and their JSON form, fast (sans-IO, pure functions).

cbrrr (C, the optional ``fast`` extra) does the work when it is installed: ~3-10x faster than :mod:`weir.codecs.atproto_cbor` both ways, same bytes
out (tests/test_atproto_json.py checks on generated values and on the recorded relay frames).
Whatever cbrrr refuses, or could read differently from weir's own codec, goes to that codec, which
decides and names the fault: so a value is accepted, refused and written exactly as before. The
differences, found by probing both, and how each is caught:

- cbrrr refuses what weir accepts (a map key ``$link`` / ``$bytes``, ``{"$link": 5}``, a float
  ``1.0`` in JSON, base32 with non-zero trailing bits...): its error sends the value to weir's codec;
- cbrrr accepts what weir refuses: nesting deeper than ``MAX_DEPTH`` (the brackets of the output
  are counted; past ~1,000 levels ``json.dumps`` raises RecursionError) and an empty CID (tag 42
  over the single byte 0x00, or ``{"$link": "b"}``);
- cbrrr writes a CIDv0 link in base32 where weir writes base58: every ``$link`` cbrrr writes must be
  a CIDv1 (``"ba…``), else weir's codec writes the record.
"""

from __future__ import annotations

import json
from typing import Any

try:  # optional (the `fast` extra): without it, weir's own codec does the work, same bytes
    import cbrrr
except ImportError:  # pragma: no cover - exercised by a test that hides the module
    cbrrr = None

from weir.codecs.atproto_cbor import MAX_DEPTH, decode, encode, from_json, to_json

_LINK = b'"$link":"'
_LINK_V1 = b'"$link":"ba'  # a CIDv1 starts with the byte 0x01: base32 'a' after the multibase 'b'
_EMPTY_CID = b"\xd8\x2a\x41\x00"  # tag 42, a byte string of one byte, 0x00: a CID of no bytes


def compact_json(value: Any) -> bytes:
    """The compact UTF-8 JSON of ``value`` (how records and bodies are persisted in json form)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def record_json(block: bytes) -> bytes:
    """The compact AT Protocol JSON (``{"$link"}``, ``{"$bytes"}``) of one DAG-CBOR value.

    Raises:
        CborError: ``block`` is not one valid DAG-CBOR value of the AT Protocol data model.
    """
    if cbrrr is None:
        return compact_json(to_json(decode(block)))
    try:
        out = compact_json(cbrrr.decode_dag_cbor(block, atjson_mode=True))
    except (ValueError, RecursionError, MemoryError):  # MemoryError: cbrrr's parse stack, on deep nesting
        return compact_json(to_json(decode(block)))
    if out.count(b"[") + out.count(b"{") > MAX_DEPTH or out.count(_LINK) != out.count(_LINK_V1):
        return compact_json(to_json(decode(block)))
    return out


def json_dag_cbor(value: Any) -> bytes:
    """The canonical DAG-CBOR of a value in AT Protocol JSON form (as ``json.loads`` gives it).

    The caller bounds the nesting (the Jetstream decoder refuses messages deeper than ``MAX_DEPTH``).

    Raises:
        CborError: ``value`` has no DAG-CBOR form (a float, a bad ``$link`` or ``$bytes``, an
            integer beyond 64 bits).
    """
    if cbrrr is None:
        return encode(from_json(value))
    try:
        out = cbrrr.encode_dag_cbor(value, atjson_mode=True)
    except (ValueError, TypeError):
        return encode(from_json(value))
    if _EMPTY_CID in out:
        return encode(from_json(value))
    return out
