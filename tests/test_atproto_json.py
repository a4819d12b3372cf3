"""Records between DAG-CBOR and JSON with cbrrr (weir/codecs/atproto_json.py) against weir's own codec.

Properties (hypothesis): on generated values, on damaged blocks and on every record and body of the
12 frames recorded from Bluesky's relay, the fast path gives the same bytes as weir's codec, and
refuses (CborError) exactly what it refuses; cbrrr alone agrees byte for byte on ordinary records.
"""

from __future__ import annotations

import json

import cbrrr
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from weir.codecs import atproto_cbor as cbor
from weir.codecs.atproto_firehose import decode_frame
from weir.codecs.atproto_json import compact_json, json_dag_cbor, record_json

from helpers import FIXTURES

RECORDED = [path.read_bytes() for path in sorted((FIXTURES / "atproto" / "frames").glob("*.bin"))]
RECORDS = [op.record for frame in RECORDED for op in decode_frame(frame).ops if op.record]
BODIES = [frame[cbor.decode_prefix(frame, 0)[1] :] for frame in RECORDED]  # commit bodies hold the CAR as bytes

keys = st.text(max_size=8) | st.sampled_from(["$type", "$link", "$bytes", "text", "createdAt"])
scalars = (st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=20)
           | st.builds(cbor.CID.of_block, st.binary(max_size=8)) | st.builds(cbor.CID, st.binary(min_size=1, max_size=40)))
values = st.recursive(scalars, lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
                      max_leaves=20)
plain_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=20)
                 | st.builds(cbor.CID.of_block, st.binary(max_size=8)))
records = st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in ("$link", "$bytes")),
                          st.recursive(plain_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                                       max_leaves=15), max_size=6)


def weir_json(block: bytes) -> bytes | str:
    try:
        return compact_json(cbor.to_json(cbor.decode(block)))
    except cbor.CborError as exc:
        return f"refused: {exc}"


def fast_json(block: bytes) -> bytes | str:
    try:
        return record_json(block)
    except cbor.CborError as exc:
        return f"refused: {exc}"


def nested(depth: int) -> bytes:
    return b"\x81" * depth + b"\x01"


@given(records)
def test_cbrrr_alone_gives_weirs_bytes_on_ordinary_records(record):
    block = cbor.encode(record)
    as_json = compact_json(cbrrr.decode_dag_cbor(block, atjson_mode=True))
    assert as_json == weir_json(block)
    assert cbrrr.encode_dag_cbor(json.loads(as_json), atjson_mode=True) == block


@settings(max_examples=300)
@given(values)
def test_decoding_gives_weirs_bytes_and_refusals(value):
    try:
        block = cbor.encode(value)
    except cbor.CborError:  # nested too deep for the encoder
        return
    assert fast_json(block) == weir_json(block)


@settings(max_examples=500)
@given(st.sampled_from(RECORDS + BODIES), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3),
       st.integers(0, 10**6))
def test_damaged_blocks_are_refused_or_read_as_weir_does(block, edits, cut):
    data = bytearray(block)
    for at, byte in edits:
        data[at % len(data)] = byte
    data = bytes(data[: max(1, len(data) - cut % 8)])
    assert fast_json(data) == weir_json(data)


@pytest.mark.parametrize("data", [
    b"\xd8\x2a\x41\x00",  # a CID of no bytes: cbrrr reads it, weir refuses it
    b"\xd8\x2a\x58\x23\x00\x12\x20" + bytes(32),  # a CIDv0: weir writes base58, cbrrr base32
    cbor.encode({"$link": "x"}),  # a reserved key: cbrrr refuses, weir reads it
    nested(cbor.MAX_DEPTH), nested(cbor.MAX_DEPTH + 1), nested(5000),  # too deep: cbrrr reads it, weir refuses
    b"\xf7", b"\xf9\x00\x00", b"\x9f\xff", b"\xd8\x2b\x41\x00", b"\x62\xc3\x28", b"\x01\x02",
])
def test_where_cbrrr_and_weir_differ_weir_decides(data):
    assert fast_json(data) == weir_json(data)


def test_every_recorded_record_and_body_maps_both_ways_as_weir_does():
    assert len(RECORDS) >= 10 and len(BODIES) == 12
    for block in RECORDS + BODIES:
        as_json = record_json(block)
        assert as_json == weir_json(block)
        assert compact_json(cbrrr.decode_dag_cbor(block, atjson_mode=True)) == as_json
        assert json_dag_cbor(json.loads(as_json)) == block == cbor.encode(cbor.from_json(json.loads(as_json)))


def weir_dag_cbor(value) -> bytes | str:
    try:
        return cbor.encode(cbor.from_json(value))
    except (cbor.CborError, UnicodeEncodeError) as exc:
        return f"refused: {type(exc).__name__}"


def fast_dag_cbor(value) -> bytes | str:
    try:
        return json_dag_cbor(value)
    except (cbor.CborError, UnicodeEncodeError) as exc:
        return f"refused: {type(exc).__name__}"


json_links = st.builds(lambda v: {"$link": v}, st.text(alphabet="bB=afkyreiqz2345670", max_size=60) | st.integers()
                       | st.sampled_from(["b", "bae", str(cbor.CID.of_block(b"x")), "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"]))
json_bytes = st.builds(lambda v: {"$bytes": v}, st.text(alphabet="AQZaz09+/-_= ", max_size=12) | st.integers())
json_scalars = (st.none() | st.booleans() | st.integers(-(2**64) - 1, 2**64) | st.floats(allow_nan=False, allow_infinity=False)
                | st.text(max_size=20) | json_links | json_bytes)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=4), max_leaves=20)


@settings(max_examples=300)
@given(json_values | records.map(lambda r: json.loads(compact_json(cbor.to_json(r)))))
@example({"$link": "b"})
@example({"$link": str(cbor.CID.of_block(b"x"))[:-1] + "b"})  # base32 with non-zero trailing bits
@example({"a": 1.0, "$bytes": "AA=="})
@example({"$bytes": "000=="})  # padding of the wrong length: read past by both codecs
def test_encoding_gives_weirs_bytes_and_refusals(value):
    assert fast_dag_cbor(value) == weir_dag_cbor(value)


def test_every_short_bytes_string_is_read_alike():
    """Every string of up to 5 characters over base64's edge cases (padding anywhere, the URL-safe
    alphabet, a space): cbrrr and weir's codec accept the same ones and write the same bytes."""
    import itertools

    for length in range(6):
        for chars in itertools.product("A0=/-_ ", repeat=length):
            value = {"$bytes": "".join(chars)}
            assert fast_dag_cbor(value) == weir_dag_cbor(value), value


def test_without_cbrrr_weirs_own_codec_gives_the_same_bytes(monkeypatch):
    """cbrrr is optional (the `fast` extra, no wheels on PyPI): without it, the same bytes."""
    from weir.codecs import atproto_json

    fast = [(atproto_json.record_json(block), atproto_json.json_dag_cbor(json.loads(record_json(block))))
            for block in RECORDS + BODIES]
    monkeypatch.setattr(atproto_json, "cbrrr", None)
    slow = [(atproto_json.record_json(block), atproto_json.json_dag_cbor(json.loads(record_json(block))))
            for block in RECORDS + BODIES]
    assert slow == fast and len(slow) >= 22
