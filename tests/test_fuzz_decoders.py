"""Fuzzers over every decoder of what a network sends (issue 10, point 7).

Each property feeds a decoder random bytes and structure-aware mutations of valid inputs (made by
the simulators, and real recorded ones from tests/fixtures/): bit flips, truncation, deletion,
duplication, inserted bytes, inflated length fields, huge declared lengths, nesting bombs. It
holds when the decoder

- raises nothing but its documented error type (WireError, GrpcFrameError, CborError, FrameError,
  ProtocolError, JsonRpcError, InvalidMessage);
- returns within the per-example deadline (a hang fails the example);
- allocates nothing in proportion to a declared length: tracemalloc's peak during the call is
  bounded by the input's size and the configured limit, not by what a length field claims.

Budget: CI runs a fixed number of examples per property, derandomized (the same inputs every run,
no example database), ~15 s in all on a 2-core machine. ``WEIR_FUZZ_EXAMPLES=20000``
runs that many per property with fresh random inputs (failures are kept in .hypothesis/ and
replayed first next time). docs/security.md ("Fuzzing") lists what was found.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
import re
import time
import tracemalloc
from unittest import mock
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import zstandard
from google.protobuf.message import DecodeError
from atproto_firehose_before import decode_frame_before, find_block_before
from atproto_reader_before import FirehoseReaderBefore
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from weir.actors import atproto as atproto_actor
from weir.actors.farcaster import recover_type_and_id
from weir.actors.ws_bounded import OversizedMessage
from weir.codecs import atproto_cbor as cbor
from weir.codecs.atproto_firehose import FrameError, RecordFilter, decode_frame
from weir.codecs.atproto_jetstream import JetstreamDecoder
from weir.codecs.atproto_order import RevTracker
from weir.codecs.atproto_positions import SeqJudge
from weir.codecs.farcaster_info import parse_get_info
from weir.codecs.ethereum_logs import EventAbi, LogDecoder, parse_header, parse_log
from weir.codecs.farcaster_keys import MERGE_MESSAGE, scan_hub_event, scan_hub_event_strict
from weir.codecs.farcaster_validity import InvalidMessage, verify_message
from weir.codecs.grpc_frames import KEEP_BYTES, GrpcFrameError, MessageSplitter, SkippedMessage
from weir.codecs.grpc_raw import RawBytesCodec
from weir.codecs.jsonrpc import (
    JsonRpcClientProtocol,
    JsonRpcError,
    ProtocolError,
    from_quantity,
    notification_text,
    parse_requests,
    reply_object,
)
from weir.codecs.protowire import LEN, WireError, bytes_field, encode_varint, iter_fields
from weir.protos.snapchain import GetInfoResponse, ShardInfo
from weir.sim.atproto_data import AtprotoSimConfig, generate_history, jetstream_dictionary
from weir.sim.ethereum import EthereumSimConfig, SimChain
from weir.sim.farcaster_data import SnapchainSimConfig, compose_hub_event, generate_offered

FIXTURES = Path(__file__).parent / "fixtures"
_EXAMPLES = os.environ.get("WEIR_FUZZ_EXAMPLES")
# Decoders answer in microseconds to milliseconds; 2 s is far above that even on a loaded machine.
DEADLINE = timedelta(seconds=2)


def fuzz(examples: int) -> settings:
    """``examples`` derandomized examples in CI; ``WEIR_FUZZ_EXAMPLES`` random ones instead."""
    common: dict[str, Any] = dict(
        deadline=DEADLINE,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                               HealthCheck.filter_too_much],
    )
    if _EXAMPLES:
        return settings(max_examples=int(_EXAMPLES), **common)
    return settings(max_examples=examples, derandomize=True, database=None, **common)


def peak_allocation(call: Callable[[], Any]) -> int:
    """Bytes allocated at the peak while ``call()`` ran (its exception, if any, propagates)."""
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def refused_or_returned(call: Callable[[], Any], errors: type[BaseException] | tuple[type[BaseException], ...]) -> Any:
    """``call()``'s value, or None when it raised one of ``errors`` (anything else fails the test)."""
    try:
        return call()
    except errors:
        return None


# --- mutations ---------------------------------------------------------------------------------

BIG = ((1 << 31) - 1, 1 << 32, 1 << 40, 1 << 63, (1 << 64) - 1)
INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF)
Inflate = Callable[[bytes, int, int], bytes]  # (data, which site, new length or length increase) -> data


@st.composite
def mutated(draw: Any, seeds: list[bytes], inflate: Inflate | None = None, max_ops: int = 4) -> bytes:
    """One of ``seeds`` after 1..max_ops mutations."""
    data = bytearray(draw(st.sampled_from(seeds)))
    kinds = ["flip", "set", "truncate", "delete", "duplicate", "insert", "run"] + (["inflate"] * 3 if inflate else [])
    for _ in range(draw(st.integers(1, max_ops))):
        kind = draw(st.sampled_from(kinds))
        size = len(data)
        at = draw(st.integers(0, size))
        if kind == "flip" and size:
            data[min(at, size - 1)] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and size:
            data[min(at, size - 1)] = draw(st.sampled_from(INTERESTING_BYTES) | st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "duplicate":
            piece = data[at : at + draw(st.integers(1, 64))]
            data[at:at] = piece * draw(st.integers(1, 40))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "run":  # over-long varints, zero padding, 0xFF lengths
            data[at:at] = bytes((draw(st.sampled_from(INTERESTING_BYTES)),)) * draw(st.integers(1, 24))
        elif kind == "inflate" and inflate is not None:
            amount = draw(st.sampled_from(BIG) | st.integers(1, 5000))
            data = bytearray(inflate(bytes(data), draw(st.integers(0, 1 << 16)), amount))
    return bytes(data)


def _new_length(length: int, amount: int) -> int:
    return amount if amount >= BIG[0] else length + amount


def protobuf_length_sites(buf: bytes, start: int = 0, end: int | None = None, depth: int = 0) -> list[tuple[int, int, int]]:
    """(prefix start, prefix end, length) of the LEN fields of ``buf``, nested messages too (best effort)."""
    sites: list[tuple[int, int, int]] = []
    try:
        for _field, wire_type, value_start, value_end in iter_fields(buf, start, end):
            if wire_type == LEN:
                length = value_end - value_start
                sites.append((value_start - len(encode_varint(length)), value_start, length))
                if depth < 8:
                    sites += protobuf_length_sites(buf, value_start, value_end, depth + 1)
    except WireError:
        pass
    return sites


def inflate_protobuf(data: bytes, which: int, amount: int) -> bytes:
    sites = protobuf_length_sites(data)
    if not sites:
        return data
    start, end, length = sites[which % len(sites)]
    return data[:start] + encode_varint(min(_new_length(length, amount), (1 << 64) - 1)) + data[end:]


def cbor_head_sites(data: bytes) -> list[tuple[int, int, int, int]]:
    """(start, end, major, argument) of each item head in ``data``, walked in order (best effort)."""
    sites = []
    pos = 0
    while pos < len(data):
        first = data[pos]
        major, info = first >> 5, first & 0x1F
        size = 0 if info < 24 else 1 << (info - 24) if info <= 27 else -1
        if size < 0 or pos + 1 + size > len(data):
            break
        arg = info if size == 0 else int.from_bytes(data[pos + 1 : pos + 1 + size], "big")
        sites.append((pos, pos + 1 + size, major, arg))
        pos += 1 + size + (arg if major in (2, 3) else 0)
    return sites


def inflate_cbor(data: bytes, which: int, amount: int) -> bytes:
    """A string, array or map head declaring ``amount`` more items/bytes, or a BIG count (8-byte head)."""
    sites = [site for site in cbor_head_sites(data) if site[2] in (2, 3, 4, 5)]
    if not sites:
        return data
    start, end, major, arg = sites[which % len(sites)]
    head = cbor._head(major, min(_new_length(arg, amount), (1 << 64) - 1))
    return data[:start] + head + data[end:]


def car_length_sites(car: bytes) -> list[tuple[int, int, int]]:
    """(varint start, varint end, length) of the header length and each section length of a CAR."""
    sites = []
    pos = 0
    try:
        while pos < len(car):
            length, after = cbor.read_varint(car, pos)
            sites.append((pos, after, length))
            pos = after + length
    except cbor.CborError:
        pass
    return sites


def inflate_car(car: bytes, which: int, amount: int) -> bytes:
    sites = car_length_sites(car)
    if not sites:
        return car
    start, end, length = sites[which % len(sites)]
    return car[:start] + cbor.encode_varint(min(_new_length(length, amount), (1 << 63) - 1)) + car[end:]


def grpc_body(messages: list[bytes]) -> bytes:
    return b"".join(b"\x00" + len(m).to_bytes(4, "big") + m for m in messages)


def inflate_grpc(body: bytes, which: int, amount: int) -> bytes:
    sites = []
    pos = 0
    while pos + 5 <= len(body):
        sites.append(pos)
        pos += 5 + int.from_bytes(body[pos + 1 : pos + 5], "big")
    if not sites:
        return body
    at = sites[which % len(sites)]
    length = int.from_bytes(body[at + 1 : at + 5], "big")
    return body[: at + 1] + min(_new_length(length, amount), (1 << 32) - 1).to_bytes(4, "big") + body[at + 5 :]


def nesting_bomb(depth: int, kind: str) -> bytes:
    """A DAG-CBOR value nested ``depth`` deep: arrays, maps or CID tags."""
    if kind == "array":
        return b"\x81" * depth + b"\x00"
    if kind == "map":
        return b"\xa1\x61a" * depth + b"\x00"
    return b"\xd8\x2a" * depth + b"\x00"


def json_nesting_bomb(depth: int, kind: str, closed: bool) -> str:
    opener, closer = ("[", "]") if kind == "array" else ('{"a":', "}")
    return opener * depth + "1" + (closer * depth if closed else "")


json_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)


def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


json_values = st.recursive(json_leaves, _json_containers, max_leaves=12)


@st.composite
def near(draw: Any, text: str) -> str:
    """A string one small edit away from ``text`` (what a validator must still refuse)."""
    edit = draw(st.sampled_from(["newline", "space", "upper", "drop", "insert", "replace", "underscore"]))
    at = draw(st.integers(0, len(text)))
    if edit == "newline":
        return text + "\n"
    if edit == "space":
        return text[:at] + " " + text[at:]
    if edit == "upper":
        return text.upper()
    if edit == "drop":
        return text[:at] + text[at + 1 :]
    if edit == "underscore":
        return text[:2] + "_" + text[2:]
    char = draw(st.characters(codec="utf-8") | st.sampled_from("٠١０ＡgG\x00x"))
    return text[:at] + char + text[at + (edit == "replace") :]


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


@st.composite
def mutated_tree(draw: Any, seeds: list[Any], max_ops: int = 3) -> Any:
    """A JSON document from ``seeds`` with 1..max_ops subtrees replaced, dropped, nearly-edited or nested."""
    doc = json.loads(json.dumps(draw(st.sampled_from(seeds))))  # a deep copy
    for _ in range(draw(st.integers(1, max_ops))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            doc = draw(json_values)
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        value = parent[key]
        edit = draw(st.sampled_from(["replace", "drop", "near", "wrap", "bomb"]))
        if edit == "drop":
            del parent[key]
        elif edit == "near" and isinstance(value, str):
            parent[key] = draw(near(value))
        elif edit == "wrap":
            parent[key] = [value] if draw(st.booleans()) else {"x": value}
        elif edit == "bomb":
            parent[key] = json.loads(json_nesting_bomb(draw(st.integers(1, 200)), draw(st.sampled_from(["array", "map"])), True))
        else:
            parent[key] = draw(json_values)
    return doc


# --- valid inputs ------------------------------------------------------------------------------

FIXTURE_MESSAGES = [path.read_bytes() for path in sorted((FIXTURES / "farcaster" / "parity").glob("valid_*.bin"))]
HUB_EVENTS = [payload for _, payload in generate_offered(SnapchainSimConfig(shards=1, seed=7, max_block_events=8), 1, 60)] + [
    compose_hub_event(MERGE_MESSAGE, 1000 + i, bytes_field(1, message), 5, 1, 123) for i, message in enumerate(FIXTURE_MESSAGES)
]
GET_INFO = [bytes(GetInfoResponse(version="0.4.1", num_shards=2, shard_infos=[ShardInfo(shard_id=1, max_height=9)]))]

HISTORY = generate_history(AtprotoSimConfig(seed=3, total=24, other_every=4))
# Four of the 12 recorded frames (two commits, a delete, an #identity): all 12 make the strategy's
# repr too large for hypothesis (a warning, an error here), and these cover every kind.
RECORDED_FRAMES = [(FIXTURES / "atproto" / "frames" / name).read_bytes()
                   for name in ("frame_00.bin", "frame_05.bin", "frame_delete.bin", "frame_identity.bin")]
FRAMES = RECORDED_FRAMES + [event.frame for event in HISTORY]
COMMIT_FRAMES = [frame for frame in FRAMES if cbor.decode_prefix(frame, 0)[0].get("t") == "#commit"]
CARS = [cbor.decode(frame[cbor.decode_prefix(frame, 0)[1] :])["blocks"] for frame in COMMIT_FRAMES]
JETSTREAM = [message for event in HISTORY for _, message in event.jetstream]
JETSTREAM_DOCS = [json.loads(message) for message in JETSTREAM]
JETSTREAM_DICTIONARY = jetstream_dictionary()
FILTERS = [RecordFilter(), RecordFilter.build(collections=["app.bsky.feed.*"]), RecordFilter.build(actions=["delete"])]

_receipt = json.loads(next((FIXTURES / "ethereum" / "receipts_with_logs").glob("*.json")).read_text())["result"]
_block = json.loads(next((FIXTURES / "ethereum" / "blocks_1755634_1755635").glob("*.json")).read_text())["result"]
_chain = SimChain(EthereumSimConfig(history=3, logs_per_block=3))
LOGS = _receipt["logs"] + [log for hash_ in _chain.canonical for log in _chain.logs[hash_]]
HEADERS = [_block] + [_chain.headers[hash_] for hash_ in _chain.canonical]
REPLIES = [reply_object(1, _receipt), reply_object(2, _block), reply_object(3, LOGS), [reply_object(1, "0x1"), reply_object(2, None)],
           {"jsonrpc": "2.0", "id": 3, "error": {"code": -32005, "message": "query returned more than 10000 results"}},
           json.loads(notification_text("eth_subscription", {"subscription": "0x9", "result": HEADERS[1]}))]


# --- protobuf: wire reader, HubEvent key scanner, Message validity, GetInfo ------------------------


@fuzz(1500)
@given(st.binary(max_size=300) | mutated(HUB_EVENTS, inflate_protobuf))
@example(b"\x12" + encode_varint((1 << 64) - 1))  # a LEN field declaring 2^64-1 bytes
@example(b"\x80" * 11)  # a varint longer than 10 bytes
@example(b"\x08\x01\x10\x05\x1a\x0f\x10" + b"\x80" * 11 + b"\x01\x0a\x00")  # the fast path skipped a 12-byte varint
def test_protobuf_scanners_raise_only_wire_error(data: bytes) -> None:
    fields = refused_or_returned(lambda: list(iter_fields(data)), WireError)
    for _field, _wire_type, start, end in fields or ():
        assert 0 <= start <= end <= len(data)
    try:
        expected = scan_hub_event_strict(data)
    except WireError as exc:
        with pytest.raises(WireError) as refused:
            scan_hub_event(data)
        assert str(refused.value) == str(exc)  # the fast path gives the strict scanner's error...
    else:
        assert scan_hub_event(data) == expected  # ... or its keys
    event_type, event_id = recover_type_and_id(data)  # the dead-letter path never raises
    assert event_type >= 0 and (event_id is None or event_id >= 0)
    assert peak_allocation(lambda: refused_or_returned(lambda: scan_hub_event(data), WireError)) < 4 * len(data) + 65536


@fuzz(1000)
@given(st.binary(max_size=250) | mutated(FIXTURE_MESSAGES, inflate_protobuf))
def test_message_validity_raises_only_invalid_message(data: bytes) -> None:
    verified = refused_or_returned(lambda: verify_message(data), InvalidMessage)
    if data in FIXTURE_MESSAGES:
        assert verified is not None


@functools.cache
def upb_get_info() -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    raw = importlib.resources.files("weir.protos").joinpath("snapchain.binpb").read_bytes()
    for file in descriptor_pb2.FileDescriptorSet.FromString(raw).file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("GetInfoResponse"))


@fuzz(600)
@given(st.binary(max_size=100) | mutated(GET_INFO, inflate_protobuf))
@example(b"1\xc2\xb0\xf8x!\x14+")  # betterproto2 raised KeyError('string')
@example(b"\x06\n\x9f\xee\x8e\xd4UD\xa2")  # ... and UnicodeDecodeError, EOFError
def test_a_garbled_get_info_reply_raises_wire_error(data: bytes) -> None:
    refused_or_returned(lambda: RawBytesCodec().decode(data, GetInfoResponse), WireError)
    read = refused_or_returned(lambda: parse_get_info(data), WireError)  # what weir run reads
    # The protobuf package's C parser as the oracle (betterproto2 is laxer: it reads a varint sent
    # for a message field); where both read the bytes, they read the same shards.
    upb = refused_or_returned(lambda: upb_get_info().FromString(data), DecodeError)
    if upb is not None and read is not None:
        assert read.num_shards == upb.num_shards
        assert read.shard_infos == tuple((s.shard_id, s.max_height) for s in upb.shard_infos)
    if data in GET_INFO:
        assert read is not None and read.height_of(1) == 9 and read.height_of(2) is None


# --- gRPC framing ------------------------------------------------------------------------------

GRPC_BODIES = [grpc_body(HUB_EVENTS[i : i + 5]) for i in range(0, len(HUB_EVENTS), 5)]


@fuzz(1000)
@given(
    st.binary(max_size=200) | mutated(GRPC_BODIES, inflate_grpc),
    st.lists(st.integers(0, 4000), max_size=12),
    st.sampled_from([64, 1000, 4 * 1024 * 1024]),
)
@example(b"\x00\xff\xff\xff\xff" + b"x" * 100, [], 4 * 1024 * 1024)  # a 4 GiB declared message
@example(b"\x00\x00\x3f\xff\xff" + b"x" * 100, [1, 2, 3], 4 * 1024 * 1024)  # 4 MiB declared, 100 bytes sent
@example(b"\x00\x00\x00\x10\x00" + b"x" * 4096 + b"\x00\x00\x00\x00\x01y", [7, 2000], 1000)  # skipped, then the next one
def test_grpc_splitter_holds_only_what_arrived(body: bytes, cuts: list[int], max_message: int) -> None:
    """However a body is cut, the splitter gives the one-shot messages (an oversized one skipped, its head
    kept) or GrpcFrameError, and holds only bytes that arrived (never a buffer of the declared length)."""
    points = sorted({min(cut, len(body)) for cut in cuts} | {0, len(body)})
    chunks = [body[a:b] for a, b in zip(points, points[1:])]

    def split(pieces: list[bytes]) -> list[bytes | SkippedMessage]:
        splitter = MessageSplitter(max_message)
        out: list[bytes | SkippedMessage] = []
        for piece in pieces:
            out += splitter.feed(piece)
        splitter.finish()
        return out

    whole = refused_or_returned(lambda: split([body]), GrpcFrameError)
    assert refused_or_returned(lambda: split(chunks), GrpcFrameError) == whole
    for message in whole or ():
        if isinstance(message, SkippedMessage):
            assert message.size > max_message or message.why.startswith("compressed")
            assert len(message.head) <= KEEP_BYTES
        else:
            assert len(message) <= max_message
    peak = peak_allocation(lambda: refused_or_returned(lambda: split(chunks), GrpcFrameError))
    assert peak < 3 * len(body) + 65536


# --- DAG-CBOR, CAR, firehose frames --------------------------------------------------------------


@fuzz(1000)
@given(
    st.binary(max_size=200) | mutated(FRAMES, inflate_cbor) | mutated(CARS, inflate_car),
)
@example(b"\x9b" + (1 << 63).to_bytes(8, "big"))  # an array of 2^63 items in 9 bytes
@example(b"\x5b" + (1 << 40).to_bytes(8, "big") + b"x")  # a byte string of 1 TiB
@example(b"\xff" * 16)  # a CAR header length that overflows the varint
def test_dag_cbor_and_car_raise_only_cbor_error(data: bytes) -> None:
    for decode in (cbor.decode, cbor.index_car):
        peak = peak_allocation(lambda: refused_or_returned(lambda: decode(data), cbor.CborError))
        assert peak < 100 * len(data) + 65536  # Python objects for what is there, never for what is declared
    for cid in {cbor.CID.of_block(b"x").raw, data[1:37], data[-36:]}:
        block = cbor.find_block(data, cid)
        assert block is None or cbor.verify_block(cid, block) is None


@fuzz(150)
@given(st.integers(1, 30000), st.sampled_from(["array", "map", "tag"]))
def test_cbor_nesting_bombs_are_refused(depth: int, kind: str) -> None:
    bomb = nesting_bomb(depth, kind)
    if depth > cbor.MAX_DEPTH:
        with pytest.raises(cbor.CborError):
            cbor.decode(bomb)
    header = cbor.encode({"op": 1, "t": "#commit"})
    for frame in (bomb + bomb, header + bomb, header + b"\xa1\x64seqs" + bomb):
        refused_or_returned(lambda: decode_frame(frame), FrameError)


@st.composite
def mutated_commits(draw: Any) -> bytes:
    """A commit frame with its body decoded and changed: ops duplicated, dropped, pointed at other CIDs,
    seq and paths replaced, the CAR mutated with inflated section lengths, then re-encoded."""
    frame = draw(st.sampled_from(COMMIT_FRAMES))
    header, at = cbor.decode_prefix(frame, 0)
    body = cbor.decode(frame[at:])
    ops = body["ops"]
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.sampled_from(["car", "dup-op", "drop-op", "cid", "path", "seq", "many-ops", "field"]))
        if edit == "car":
            body["blocks"] = draw(mutated(CARS + [body["blocks"]], inflate_car))
        elif edit == "dup-op" and ops:
            ops += [draw(st.sampled_from(ops))] * draw(st.integers(1, 5))
        elif edit == "drop-op" and ops:
            ops.pop(draw(st.integers(0, len(ops) - 1)))
        elif edit == "cid" and ops:
            op = draw(st.sampled_from(ops))
            op["cid"] = draw(st.sampled_from([cbor.CID.of_block(b"missing"), cbor.CID(b"\x01"), cbor.CID(b"\x12\x20" + bytes(32)), None]))
        elif edit == "path" and ops:
            draw(st.sampled_from(ops))["path"] = draw(st.sampled_from(["", "/", "a/", "/b", "a/b/c", "app.bsky.feed.post/x"]) | st.text(max_size=10))
        elif edit == "seq":
            body["seq"] = draw(st.sampled_from([-1, 0, 1 << 63, (1 << 64) - 1]) | st.integers(0, 1 << 64))
        elif edit == "many-ops" and ops:
            ops += [ops[0]] * 200
        else:
            body[draw(st.sampled_from(["repo", "time", "rev", "ops", "blocks", "commit"]))] = draw(
                st.sampled_from([None, True, 7, "", b"", [], {}, "did:x"])
            )
    try:
        return cbor.encode(header) + cbor.encode(body)
    except cbor.CborError:
        return frame  # a mutation the encoder cannot write (an out-of-range seq): the frame as it was


def car_bomb(copies: int) -> bytes:
    """A commit whose CAR repeats its op's CID behind 3-byte section lengths (~1 MB each): a search that
    hashes every candidate section hashes up to 1 MB per repetition."""
    record = cbor.encode({"$type": "app.bsky.feed.post", "text": "hi", "createdAt": "2026-08-10T00:00:00Z"})
    cid = cbor.CID.of_block(record)
    car = cbor.encode_car([cid], []) + (b"\xff\xff\x3f" + cid.raw) * copies
    op = {"action": "create", "path": "app.bsky.feed.post/3k", "cid": cid}
    body = {"seq": 5, "repo": "did:plc:x", "time": "2026-08-10T00:00:00Z", "rev": "3k", "ops": [op] * 3, "blocks": car}
    return cbor.encode({"op": 1, "t": "#commit"}) + cbor.encode(body)


@fuzz(1000)
@given(st.binary(max_size=200) | mutated(FRAMES, inflate_cbor) | mutated_commits(), st.sampled_from(FILTERS))
@example(cbor.encode({"op": 1, "t": "#commit"}) + cbor.encode(
    {"seq": 1, "repo": "did:plc:x", "time": "t", "rev": "r", "ops": [{"action": [], "path": "a/b"}], "blocks": b""}
), RecordFilter())  # an unhashable action raised TypeError
@example(cbor.encode({"op": 1, "t": "#identity"}) + b"\xa4\x61x" + nesting_bomb(900, "array")
         + cbor.encode("did") + cbor.encode("did:plc:x") + cbor.encode("seq") + cbor.encode(1) + cbor.encode("time") + cbor.encode("t"),
         RecordFilter())  # a body nested 900 deep: libipld takes it, the strict decoder refuses it
@example(car_bomb(50_000), RecordFilter())  # 1.9 MB of blocks: took 15 s per op before find_block had a budget
def test_firehose_frames_raise_only_frame_error_and_every_record_matches_its_cid(frame: bytes, keep: RecordFilter) -> None:
    started = time.perf_counter()
    decoded = refused_or_returned(lambda: decode_frame(frame, keep=keep), FrameError)
    assert time.perf_counter() - started < 1.5  # a frame within the limits decodes in linear time
    for op in decoded.ops if decoded is not None else ():
        if op.action != "delete":
            assert op.record is not None and cbor.verify_block(op.cid, op.record) is None  # content addressing holds
    if decoded is not None and decoded.seq is not None:  # the actor's JSON form: records, or the body, decoded strictly
        payloads = [op.record for op in decoded.ops if op.record] if decoded.kind == "commit" else [frame[decoded.body_offset :]]
        for payload in payloads:
            refused_or_returned(lambda: json.dumps(cbor.to_json(cbor.decode(payload))), cbor.CborError)
    assert peak_allocation(lambda: refused_or_returned(lambda: decode_frame(frame, keep=keep), FrameError)) < 100 * len(frame) + 262144


# --- the tuned firehose decoder against the one before (tests/atproto_firehose_before.py) -----------

ALL_RECORDED_FRAMES = [path.read_bytes() for path in sorted((FIXTURES / "atproto" / "frames").glob("*.bin"))]
EQUIVALENCE_FILTERS = FILTERS + [
    RecordFilter.build(collections=["app.bsky.feed.post"], kinds=["commit"]),  # the benchmark's filter
    RecordFilter.build(collections=["app.bsky.feed.like", "app.bsky.graph.*"], actions=["create", "delete"]),
    RecordFilter.build(dids=["did:plc:nobody"]),
]


def frame_outcome(decode: Callable[..., Any], frame: bytes, keep: RecordFilter) -> tuple[Any, ...]:
    """Everything a decode says about ``frame``: the frame's fields and ops, or the error's class, text and seq."""
    try:
        got = decode(frame, keep=keep)
    except FrameError as exc:
        return (type(exc).__name__, str(exc), exc.seq)
    ops = [(op.index, op.action, op.collection, op.rkey, op.cid, op.record) for op in got.ops]
    return (got.kind, got.type, got.seq, got.did, got.time, got.rev, ops, got.total_ops, dict(got.body), got.body_offset, got.wanted)


def reader_outcome(frames: list[bytes], keep: RecordFilter, decode: Callable[..., Any]) -> tuple[Any, ...]:
    """What a FirehoseReader hands on for ``frames`` (two reads) when it decodes with ``decode``."""
    with mock.patch.object(atproto_actor, "decode_frame", decode):
        reader = atproto_actor.FirehoseReader(partition="p", stats=atproto_actor.AtprotoStats(), keep=keep)
        chunks = [reader.read(frames[:3], 1.0), reader.read(frames[3:], 2.0)]
    dead = [(d.reason, d.position, d.payload) for d in reader._unplaced]
    return ([(c.events, c.dead, c.through) if c else None for c in chunks], dead, reader.last_id, reader.progress,
            reader.longest_bad_run, attrs.asdict(reader.stats))


def commit_with_ops(*ops: dict[str, Any]) -> bytes:
    record = cbor.encode({"$type": "app.bsky.feed.post", "text": "hi"})
    body = {"seq": 9, "repo": "did:plc:x", "time": "2026-08-10T00:00:00Z", "rev": "3k", "ops": list(ops),
            "blocks": cbor.encode_car([], [(cbor.CID.of_block(record), record)])}
    return cbor.encode({"op": 1, "t": "#commit"}) + cbor.encode(body)


MISSING_BLOCK = {"action": "create", "path": "app.bsky.feed.post/a", "cid": cbor.CID.of_block(b"not in the CAR")}


@fuzz(400)
@given(st.binary(max_size=200) | mutated(FRAMES, inflate_cbor) | mutated_commits() | st.sampled_from(FRAMES),
       st.sampled_from(EQUIVALENCE_FILTERS))
@example(commit_with_ops(MISSING_BLOCK, {"action": "create", "path": "app.bsky.feed.post"}), RecordFilter())  # the bad path is reported, not the block
@example(commit_with_ops(MISSING_BLOCK, MISSING_BLOCK | {"path": "app.bsky.feed.post/b"}), RecordFilter())  # the first op's block
def test_tuned_frame_decoder_gives_what_the_one_before_gave(frame: bytes, keep: RecordFilter) -> None:
    assert frame_outcome(decode_frame, frame, keep) == frame_outcome(decode_frame_before, frame, keep)


@st.composite
def cars_of_any_section_length(draw: Any) -> bytes:
    """A CAR of blocks from a few bytes to past 2 MiB: section lengths of 1, 2 and 3 varint bytes."""
    sizes = draw(st.lists(st.sampled_from([0, 1, 90, 91, 200, 16_000, 16_400, 2_100_000]) | st.integers(0, 70_000), min_size=1, max_size=4))
    blocks = [bytes([draw(st.integers(0, 255))]) * size for size in sizes]
    return cbor.encode_car([cbor.CID.of_block(blocks[0])], [(cbor.CID.of_block(block), block) for block in blocks])


TWO_BIG_BLOCKS = cbor.encode_car([], [(cbor.CID.of_block(bytes([n]) * n * 1000), bytes([n]) * n * 1000) for n in (20, 30)])


@fuzz(300)
@given(mutated(CARS, inflate_car) | cars_of_any_section_length() | mutated(CARS + [cbor.encode_car([], [(cbor.CID.of_block(bytes(20_000)), bytes(20_000))])]),
       st.sampled_from(CARS) | cars_of_any_section_length(), st.integers(0, 7))
@example(TWO_BIG_BLOCKS, TWO_BIG_BLOCKS, 0)  # a 3-byte section length, within find_block's hashing budget
def test_tuned_find_block_gives_what_the_one_before_gave(car: bytes, source: bytes, which: int) -> None:
    cids = list(cbor.index_car(source)) + list(refused_or_returned(lambda: cbor.index_car(car), cbor.CborError) or ())
    cid = cids[which % len(cids)]
    assert cbor.find_block(car, cid) == find_block_before(car, cid)


@fuzz(150)
@given(st.lists(mutated(FRAMES, inflate_cbor) | mutated_commits() | st.sampled_from(FRAMES), min_size=1, max_size=6),
       st.sampled_from(EQUIVALENCE_FILTERS))
def test_reader_hands_on_the_same_with_the_tuned_decoder(frames: list[bytes], keep: RecordFilter) -> None:
    """Events, dead letters with their reasons, the seq / cursor and every count, frame for frame."""
    assert reader_outcome(frames, keep, decode_frame) == reader_outcome(frames, keep, decode_frame_before)


@pytest.mark.parametrize("keep", EQUIVALENCE_FILTERS)
def test_tuned_decoder_on_the_recorded_relay_frames(keep: RecordFilter) -> None:
    """The 12 recorded frames: likes and reposts name app.bsky.feed.post in their subject, not in an op path."""
    for frame in ALL_RECORDED_FRAMES:
        assert frame_outcome(decode_frame, frame, keep) == frame_outcome(decode_frame_before, frame, keep)
    assert reader_outcome(ALL_RECORDED_FRAMES, keep, decode_frame) == reader_outcome(ALL_RECORDED_FRAMES, keep, decode_frame_before)


# --- the tuned firehose reader against the one before (tests/atproto_reader_before.py) --------------

DIDS = ["did:plc:a", "did:plc:b"]
REVS = ["3k1", "3k2", "3k3"]


@st.composite
def firehose_reads(draw: Any) -> list[list[bytes | str | OversizedMessage]]:
    """Up to three reads of frames from the simulated and recorded ones with their seqs stepping on
    from the last (forward by one or a few, repeated, back, or far ahead), their DID and rev drawn
    from a few (a DID's rev goes forward, stays or goes back); among them #info frames, text
    messages, frames over the transport's limit and mutated frames."""
    seq = draw(st.integers(0, 6))
    reads = []
    for _ in range(draw(st.integers(1, 3))):
        frames: list[bytes | str | OversizedMessage] = []
        for _ in range(draw(st.integers(0, 5))):
            kind = draw(st.sampled_from(["renumbered"] * 8 + ["mutated", "info", "text", "oversized"]))
            if kind == "info":
                name = draw(st.sampled_from(["OutdatedCursor", "Other"]))
                frames.append(cbor.encode({"op": 1, "t": "#info"}) + cbor.encode({"name": name}))
            elif kind == "text":
                frames.append("{}")
            elif kind == "mutated":
                frames.append(draw(mutated(FRAMES)))
            else:
                frame = draw(st.sampled_from(FRAMES))
                header, at = cbor.decode_prefix(frame, 0)
                body = cbor.decode(frame[at:])
                seq = max(0, seq + draw(st.sampled_from([1, 1, 1, 2, 0, -1, -3, 5_000, 10**7])))
                body["seq"] = seq
                body["repo" if header.get("t") == "#commit" else "did"] = draw(st.sampled_from(DIDS))
                if "rev" in body:
                    body["rev"] = draw(st.sampled_from(REVS))
                renumbered = cbor.encode(header) + cbor.encode(body)
                frames.append(OversizedMessage(size=9_000_000, head=renumbered[:200]) if kind == "oversized" else renumbered)
        reads.append(frames)
    return reads


def reader_state(reader_class: type[atproto_actor.FirehoseReader], reads: list[list[Any]], keep: RecordFilter,
                 judged: tuple[int | None, bool, int], revs: list[tuple[str, str, int]], capacity: int) -> tuple[Any, ...]:
    """What a reader of ``reader_class`` hands on for ``reads`` and the state it is left in, from a judge
    at (last, skip_announced, bad_in_row) and a rev table of ``capacity`` holding ``revs``."""
    tracker = RevTracker(capacity=capacity)
    for did, rev, at in revs:
        tracker.advance(did, rev, at=at)
    judge = SeqJudge(max_bad_in_row=3, max_jump=1000, last=judged[0], skip_announced=judged[1], bad_in_row=judged[2])
    stats = atproto_actor.AtprotoStats(refused="refused before")
    reader = reader_class(partition="p", stats=stats, keep=keep, judge=judge, revs=tracker, last_id=judged[0])
    chunks = [reader.read(frames, float(n)) for n, frames in enumerate(reads)]
    return ([(c.events, c.dead, c.through) if c else None for c in chunks], reader._unplaced, reader.last_id, reader.progress,
            reader.consecutive_bad, reader.longest_bad_run, reader.refusal, str(reader.relay_error), attrs.asdict(reader.stats),
            (judge.last, judge.skip_announced, judge.bad_in_row), list(tracker.entries().items()))


@fuzz(300)
@given(firehose_reads(), st.sampled_from(EQUIVALENCE_FILTERS),
       st.sampled_from([(None, False, 0), (0, False, 0), (3, False, 0), (3, True, 0), (1, False, 1), (4, True, 2)]),
       st.lists(st.tuples(st.sampled_from(DIDS), st.sampled_from(REVS), st.sampled_from([0, 0, 5])), max_size=3),
       st.integers(1, 3))
def test_tuned_reader_hands_on_what_the_one_before_did(reads: list[list[Any]], keep: RecordFilter, judged: tuple[int | None, bool, int],
                                                       revs: list[tuple[str, str, int]], capacity: int) -> None:
    """Events, dead letters, cursor, counts, the judge's state and the rev table (its eviction order too)."""
    assert reader_state(atproto_actor.FirehoseReader, reads, keep, judged, revs, capacity) == \
        reader_state(FirehoseReaderBefore, reads, keep, judged, revs, capacity)


# --- Jetstream JSON and zstd ------------------------------------------------------------------------

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
IDENTITY_NESTED = '{"did": "did:plc:x", "time_us": 5, "kind": "identity", "identity": {"handle": "a.b", "x": %s}}'
JETSTREAM_LIMIT = 65536


def redeclare(frame: bytes, size: int | None) -> bytes:
    """``frame`` (one zstd frame) with a header declaring ``size`` content bytes, or no size at all."""
    if frame[:4] != ZSTD_MAGIC or len(frame) < 6:
        return frame
    descriptor = frame[4]
    single_segment = descriptor >> 5 & 1
    pos = 5 + (not single_segment)
    dictionary_id = frame[pos : pos + (0, 1, 2, 4)[descriptor & 3]]
    pos += len(dictionary_id) + (single_segment, 2, 4, 8)[descriptor >> 6]
    window = frame[5:6] if not single_segment else bytes(((17 - 10) << 3,))  # 128 KiB: holds any seed
    declared = b"" if size is None else size.to_bytes(8, "little")
    flags = (0 if size is None else 3 << 6) | (descriptor & 0x07)  # keep the checksum and dictionary flags
    return ZSTD_MAGIC + bytes((flags,)) + window + dictionary_id + declared + frame[pos:]


def zstd(data: bytes, *, declared: bool, dictionary: bytes | None = None) -> bytes:
    kw = {"dict_data": zstandard.ZstdCompressionDict(dictionary)} if dictionary else {}
    return zstandard.ZstdCompressor(write_content_size=declared, **kw).compress(data)


ZSTD_FRAMES = [zstd(m.encode(), declared=d, dictionary=JETSTREAM_DICTIONARY if d else None) for m in JETSTREAM[:6] for d in (True, False)]
ZSTD_BOMBS = [zstd(bytes(4_000_000), declared=d) for d in (True, False)]  # 4 MB of zeros in ~150 bytes


@st.composite
def zstd_messages(draw: Any) -> bytes:
    """Compressed messages: valid or mutated JSON compressed, frames mutated, bombs, sizes re-declared."""
    source = draw(st.sampled_from(["json", "frame", "bomb"]))
    if source == "json":
        text = json.dumps(draw(mutated_tree(JETSTREAM_DOCS)))
        frame = zstd(text.encode(), declared=draw(st.booleans()), dictionary=draw(st.sampled_from([None, JETSTREAM_DICTIONARY])))
    elif source == "frame":
        frame = draw(mutated(ZSTD_FRAMES))
    else:
        frame = draw(st.sampled_from(ZSTD_BOMBS))
    if draw(st.booleans()):
        frame = redeclare(frame, draw(st.none() | st.sampled_from(BIG) | st.integers(0, 2 * JETSTREAM_LIMIT)))
    return frame


@fuzz(1000)
@given(
    st.text(max_size=200)
    | mutated_tree(JETSTREAM_DOCS).map(json.dumps)
    | mutated([m.encode() for m in JETSTREAM]).map(lambda b: b.decode(errors="replace"))
    | zstd_messages(),
    st.booleans(),
)
@example(redeclare(ZSTD_BOMBS[0], (1 << 64) - 1), True)  # declares 2^64-1 bytes
@example(redeclare(ZSTD_BOMBS[0], None), False)  # 4 MB, size not declared
@example(redeclare(ZSTD_FRAMES[0], 1 << 40), True)  # a real message declaring 1 TiB
@example('{"did": "did:plc:x", "time_us": 5, "kind": "commit", "commit": {"operation": []}}', False)  # TypeError before
@example(IDENTITY_NESTED % ("[" * 500 + "]" * 500), False)  # accepted, then RecursionError in cbor.from_json
def test_jetstream_raises_only_frame_error_and_decompresses_within_the_limit(message: str | bytes, with_dictionary: bool) -> None:
    decoder = JetstreamDecoder(max_frame=JETSTREAM_LIMIT, dictionary=JETSTREAM_DICTIONARY if with_dictionary else None)
    decoded = refused_or_returned(lambda: decoder.decode(message), FrameError)
    if decoded is not None:  # what the actor does with an accepted body: re-encode it, as JSON or DAG-CBOR
        json.dumps(decoded.body)
        refused_or_returned(lambda: cbor.encode(cbor.from_json(decoded.body)), cbor.CborError)
    peak = peak_allocation(lambda: refused_or_returned(lambda: decoder.decode(message), FrameError))
    # The output so far plus one slice's (streamed frames stop within 384 KiB past the limit), never a declared size.
    assert peak < 3 * (JETSTREAM_LIMIT + 512 * 1024) + 16 * len(message)


@fuzz(150)
@given(st.integers(1, 100_000), st.sampled_from(["array", "map"]), st.booleans())
def test_json_nesting_bombs_are_refused(depth: int, kind: str, closed: bool) -> None:
    bomb = json_nesting_bomb(depth, kind, closed)
    refused_or_returned(lambda: JetstreamDecoder().decode(bomb), FrameError)
    inside = refused_or_returned(lambda: JetstreamDecoder().decode(IDENTITY_NESTED % bomb), FrameError)
    if inside is not None:  # nested no deeper than DAG-CBOR allows: the actor can re-encode it
        cbor.encode(cbor.from_json(inside.body))
    refused_or_returned(lambda: JsonRpcClientProtocol().receive(bomb), ProtocolError)
    refused_or_returned(lambda: parse_requests(bomb), JsonRpcError)


# --- JSON-RPC and Ethereum values ---------------------------------------------------------------------


@fuzz(1000)
@given(
    st.text(max_size=200)
    | mutated_tree(REPLIES).map(json.dumps)
    | mutated([json.dumps(reply).encode() for reply in REPLIES]).map(lambda b: b.decode(errors="replace"))
)
@example("[" * 100_000)  # RecursionError escaped receive() before
@example('{"a":' * 100_000)
def test_json_rpc_replies_raise_only_protocol_error(message: str) -> None:
    protocol = JsonRpcClientProtocol()
    for method in ("eth_getTransactionReceipt", "eth_getBlockByNumber", "eth_getLogs"):
        protocol.request(method, [])
    refused_or_returned(lambda: protocol.receive(message), ProtocolError)
    refused_or_returned(lambda: parse_requests(message), JsonRpcError)


CANONICAL_HASH = r"0x[0-9a-f]{64}"


def canonical(text: str, pattern: str) -> bool:
    return re.fullmatch(pattern, text) is not None


@fuzz(1000)
@given(mutated_tree(LOGS) | json_values)
@example({**LOGS[0], "blockHash": LOGS[0]["blockHash"] + "\n"})  # "$" matched before a final newline
@example({**LOGS[0], "logIndex": "0x1 "})  # int() took surrounding spaces...
@example({**LOGS[0], "blockNumber": "0x_1"})  # ... and underscores
def test_logs_raise_only_protocol_error_and_accepted_ones_are_canonical(obj: Any) -> None:
    log = refused_or_returned(lambda: parse_log(obj), ProtocolError)
    if log is None:
        return
    assert all(canonical(h, CANONICAL_HASH) for h in (log.block_hash, log.tx_hash, *log.topics))
    assert canonical(log.address, r"0x[0-9a-f]{40}") and canonical(log.data, r"0x(?:[0-9a-f]{2})*")
    for field in ("blockNumber", "logIndex"):
        assert canonical(obj[field], r"0[xX][0-9a-fA-F]+")
    LOG_DECODER.decode(log)  # None or Decoded, never an exception


@fuzz(1000)
@given(mutated_tree(HEADERS) | json_values)
@example({**HEADERS[0], "parentHash": HEADERS[0]["parentHash"] + "\n"})
def test_headers_raise_only_protocol_error_and_accepted_ones_are_canonical(obj: Any) -> None:
    header = refused_or_returned(lambda: parse_header(obj), ProtocolError)
    if header is not None:
        assert canonical(header.hash, CANONICAL_HASH) and canonical(header.parent_hash, CANONICAL_HASH)


@fuzz(1000)
@given(json_values | st.text(max_size=70).map(lambda s: "0x" + s) | st.sampled_from(["0x1 ", "0x_1", "0x١", "0x"]))
def test_quantities_are_hex_digits_or_protocol_error(value: Any) -> None:
    number = refused_or_returned(lambda: from_quantity(value), ProtocolError)
    if number is not None:
        assert canonical(value, r"0[xX][0-9a-fA-F]+") and int(value, 16) == number


# ABI-encoded event data whose offsets and array lengths are attacker-chosen: eth-abi must refuse them
# from what is there, not allocate what they declare.
DYNAMIC_EVENTS = [EventAbi.parse("Blob(uint256[] values, bytes data, string note)"), EventAbi.parse("Nest((address,uint8)[] pairs)")]
LOG_DECODER = LogDecoder(DYNAMIC_EVENTS)
_word = st.sampled_from([0, 32, 64, 96, 1 << 20, (1 << 64) - 1, (1 << 256) - 1]) | st.integers(0, (1 << 256) - 1)


@fuzz(600)
@given(st.sampled_from(DYNAMIC_EVENTS), st.lists(_word, max_size=12), st.binary(max_size=64))
def test_abi_data_with_huge_declared_lengths_is_refused_cheaply(abi: EventAbi, words: list[int], tail: bytes) -> None:
    data = b"".join(word.to_bytes(32, "big") for word in words) + tail
    log = parse_log({**LOGS[0], "topics": [abi.topic0], "data": "0x" + data.hex()})
    peak = peak_allocation(lambda: LOG_DECODER.decode(log))
    assert peak < 200 * len(data) + 262144
