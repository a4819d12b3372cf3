"""Conformance: the 12 frames recorded from Bluesky's relay (tests/fixtures/atproto/frames/).

Each frame is decoded by weir and checked against what the frame itself holds, read independently
(libipld's CAR decoder for the blocks, libipld's DAG-CBOR decoder for the body): every op becomes
one event with the right keys, each record is the exact block its CID names, and the CID is the
block's sha-256.
"""

from __future__ import annotations

import hashlib

import libipld
import pytest

from weir.actors.atproto import AtprotoStats, FirehoseReader
from weir.codecs import atproto_cbor as cbor
from weir.codecs.atproto_firehose import RecordFilter, decode_frame

from helpers import FIXTURES, fixture_file

NAMES = [f"frame_{i:02d}.bin" for i in range(10)] + ["frame_delete.bin", "frame_identity.bin"]


def load(name: str) -> bytes:
    return fixture_file(f"atproto/frames/{name}").read_bytes()


def test_all_twelve_frames_are_there():
    assert sorted(p.name for p in (FIXTURES / "atproto" / "frames").glob("*.bin")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_frame_decodes_to_what_it_contains(name):
    data = load(name)
    header, body = libipld.decode_dag_cbor_multi(data)
    chunk = FirehoseReader(partition="relay", stats=AtprotoStats()).read([data], 0.0)
    assert chunk is not None and chunk.dead == [] and chunk.through == body["seq"]
    if header["t"] != "#commit":
        (event,) = chunk.events
        assert event.kind == header["t"][1:] and event.fields["did"] == body["did"] and event.position == body["seq"]
        assert libipld.decode_dag_cbor(event.payload) == body  # data = the body's original bytes
        return
    _, blocks = libipld.decode_car(body["blocks"])
    assert [e.sub for e in chunk.events] == list(range(len(body["ops"])))
    for event, op in zip(chunk.events, body["ops"]):
        collection, rkey = op["path"].split("/")
        assert event.position == body["seq"] and event.kind == "commit"
        assert event.fields == {**event.fields, "did": body["repo"], "collection": collection, "rkey": rkey,
                                "action": op["action"], "rev": body["rev"], "seq": body["seq"], "time": body["time"]}
        if op["action"] == "delete":
            assert event.payload == b"" and "cid" not in event.fields
            continue
        assert hashlib.sha256(event.payload).digest() == op["cid"][4:]
        assert libipld.decode_dag_cbor(event.payload) == blocks[op["cid"]]
        assert event.payload and cbor.decode(event.payload)["$type"] == collection
        assert event.fields["cid"] == libipld.encode_cid(op["cid"]) and event.key == event.fields["cid"].encode()


def test_recorded_frames_round_trip_through_the_strict_decoder():
    """weir's own DAG-CBOR decoder and encoder agree byte for byte with the relay's encoding."""
    for name in NAMES:
        data = load(name)
        header, end = cbor.decode_prefix(data)
        body = cbor.decode(data[end:])
        assert cbor.encode(header) + cbor.encode(body) == data


def test_a_one_collection_filter_keeps_only_that_collection():
    frames = [load(name) for name in NAMES]
    keep = RecordFilter.build(collections=["app.bsky.feed.like"])
    kept = [op for f in frames for op in decode_frame(f, keep=keep).ops]
    assert len(kept) == 7 and {op.collection for op in kept} == {"app.bsky.feed.like"}


def test_a_damaged_record_is_a_dead_letter_naming_the_cid():
    data = bytearray(load("frame_00.bin"))
    header, body = libipld.decode_dag_cbor_multi(bytes(data))
    record = libipld.encode_dag_cbor(libipld.decode_car(body["blocks"])[1][body["ops"][0]["cid"]])
    at = bytes(data).find(record)
    assert at > 0
    data[at + len(record) - 1] ^= 1
    chunk = FirehoseReader(partition="relay", stats=AtprotoStats()).read([bytes(data)], 0.0)
    assert chunk.events == [] and chunk.dead[0].position == body["seq"]
    assert "does not match its CID" in chunk.dead[0].reason or "not in the CAR" in chunk.dead[0].reason
