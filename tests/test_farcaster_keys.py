"""The key scanner pulls exactly what the typed models would decode, without decoding."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weir.codecs.farcaster_keys import BLOCK_CONFIRMED, scan_hub_event, scan_message
from weir.codecs.protowire import WireError
from weir.protos.snapchain import (
    BlockConfirmedBody,
    CastAddBody,
    CastId,
    HubEvent,
    HubEventType,
    MergeFailureBody,
    MergeMessageBody,
    MergeOnChainEventBody,
    MergeUserNameProofBody,
    Message,
    MessageData,
    MessageType,
    OnChainEvent,
    PruneMessageBody,
    ReactionBody,
    RevokeMessageBody,
    UserNameProof,
)

uint64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
uint32 = st.integers(min_value=0, max_value=(1 << 32) - 1)
message_types = st.sampled_from([MessageType.CAST_ADD, MessageType.REACTION_ADD, MessageType.LINK_ADD, MessageType.CAST_REMOVE])


@st.composite
def messages(draw, with_data_bytes=st.booleans()):
    data = MessageData(
        type=draw(message_types),
        fid=draw(st.integers(1, (1 << 63) - 1)),
        timestamp=draw(uint32),
        network=1,
    )
    if draw(st.booleans()):
        data.cast_add_body = CastAddBody(text=draw(st.text(max_size=40)), mentions=draw(st.lists(uint64, max_size=3)))
    else:
        data.reaction_body = ReactionBody(type=1, target_cast_id=CastId(fid=draw(uint64), hash=draw(st.binary(min_size=20, max_size=20))))
    message = Message(
        hash=draw(st.binary(min_size=20, max_size=20)),
        hash_scheme=1,
        signature=draw(st.binary(min_size=64, max_size=64)),
        signature_scheme=1,
        signer=draw(st.binary(min_size=32, max_size=32)),
    )
    # A node may send `data`, `data_bytes`, or both; the scanner must find fid and type either way.
    form = draw(st.sampled_from(["data", "data_bytes", "both"]))
    if form in ("data", "both"):
        message.data = data
    if form in ("data_bytes", "both"):
        message.data_bytes = bytes(data)
    return message, data


@st.composite
def hub_events(draw):
    kind = draw(st.sampled_from(["merge", "prune", "revoke", "failure", "onchain", "proof", "block"]))
    event = HubEvent(
        id=draw(st.integers(1, (1 << 64) - 1)),  # proto3 omits 0; a real event id is never 0
        block_number=draw(uint64),
        shard_index=draw(uint32),
        timestamp=draw(uint64),
    )
    expect = {"fid": 0, "msg_type": 0, "msg_hash": b"", "block": None}
    if kind in ("merge", "prune", "revoke", "failure", "proof"):
        message, data = draw(messages())
        expect.update(fid=data.fid, msg_type=int(data.type), msg_hash=message.hash)
    if kind == "merge":
        event.type = HubEventType.MERGE_MESSAGE
        event.merge_message_body = MergeMessageBody(message=message, deleted_messages=[draw(messages())[0]] if draw(st.booleans()) else [])
    elif kind == "prune":
        event.type = HubEventType.PRUNE_MESSAGE
        event.prune_message_body = PruneMessageBody(message=message)
    elif kind == "revoke":
        event.type = HubEventType.REVOKE_MESSAGE
        event.revoke_message_body = RevokeMessageBody(message=message)
    elif kind == "failure":
        event.type = HubEventType.MERGE_FAILURE
        event.merge_failure = MergeFailureBody(message=message, code="bad_request", reason="x")
    elif kind == "proof":
        event.type = HubEventType.MERGE_USERNAME_PROOF
        event.merge_username_proof_body = MergeUserNameProofBody(
            username_proof=UserNameProof(fid=draw(uint64), name=b"alice"), username_proof_message=message
        )
    elif kind == "onchain":
        fid = draw(uint64)
        event.type = HubEventType.MERGE_ON_CHAIN_EVENT
        event.merge_on_chain_event_body = MergeOnChainEventBody(on_chain_event=OnChainEvent(type=1, chain_id=10, fid=fid, log_index=3))
        expect["fid"] = fid
    else:
        counts = draw(st.dictionaries(st.integers(-(1 << 31), (1 << 31) - 1), uint64, max_size=4))
        total = draw(uint64)
        block_number = draw(uint64)
        event.type = HubEventType.BLOCK_CONFIRMED
        event.block_confirmed_body = BlockConfirmedBody(
            block_number=block_number, shard_index=1, total_events=total, event_counts_by_type=counts, block_hash=b"\x01" * 32
        )
        expect["block"] = (block_number, total, counts)
    return event, expect


@settings(max_examples=300)
@given(hub_events())
def test_scan_matches_the_typed_encoding(case) -> None:
    event, expect = case
    keys = scan_hub_event(bytes(event))
    assert keys.event_type == int(event.type)
    assert keys.event_id == event.id
    assert keys.shard == event.shard_index
    assert keys.block_number == event.block_number
    assert keys.timestamp == event.timestamp
    assert keys.fid == expect["fid"]
    assert keys.msg_type == expect["msg_type"]
    assert keys.msg_hash == expect["msg_hash"]
    if expect["block"] is None:
        assert keys.block is None
    else:
        assert keys.event_type == BLOCK_CONFIRMED
        assert (keys.block.block_number, keys.block.total_events, keys.block.counts_by_type) == expect["block"]


@given(hub_events(), st.data())
def test_truncated_events_raise_wire_error_or_scan(case, data) -> None:
    payload = bytes(case[0])
    cut = data.draw(st.integers(0, max(0, len(payload) - 1)))
    try:
        scan_hub_event(payload[:cut])
    except WireError:
        pass


@given(st.binary(max_size=300))
def test_random_bytes_only_raise_wire_error(data: bytes) -> None:
    try:
        scan_hub_event(data)
    except WireError:
        pass


def test_event_without_id_is_rejected() -> None:
    with pytest.raises(WireError, match="no id"):
        scan_hub_event(bytes(HubEvent(type=HubEventType.MERGE_MESSAGE, block_number=5)))


def test_scan_message_alone() -> None:
    data = MessageData(type=MessageType.LINK_ADD, fid=77, timestamp=5, network=1)
    message = Message(data=data, hash=b"\x09" * 20)
    assert scan_message(bytes(message)) == (77, int(MessageType.LINK_ADD), b"\x09" * 20)


def damage(payload: bytes, data) -> bytes:
    """``payload`` with maybe one byte changed, then cut anywhere."""
    damaged = bytearray(payload)
    if damaged and data.draw(st.booleans()):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    return bytes(damaged[: data.draw(st.integers(0, len(damaged)))])


def assert_reads_as_the_strict_scanner(payload: bytes) -> None:
    from weir.codecs.farcaster_keys import scan_hub_event_strict

    try:
        expected = scan_hub_event_strict(payload)
    except WireError as exc:
        with pytest.raises(WireError) as info:
            scan_hub_event(payload)
        assert str(info.value) == str(exc)
    else:
        assert scan_hub_event(payload) == expected


@settings(max_examples=300)
@given(hub_events(), st.data())
def test_fast_path_agrees_with_the_strict_scanner_on_damaged_events(case, data) -> None:
    """Truncations and byte flips: the fast path gives the strict scanner's answer or its error."""
    assert_reads_as_the_strict_scanner(damage(bytes(case[0]), data))


@functools.cache
def _simulated_events() -> list[bytes]:
    """The simulator's events, written in prost's field order (a oneof body before the fields after
    it), which upb does not reproduce for OnChainEvent and BLOCK_CONFIRMED: the Python paths read them."""
    from weir.sim.farcaster_data import SnapchainSimConfig, generate_offered

    return [p for _, p in generate_offered(SnapchainSimConfig(shards=1, seed=3), 1, 400)]


@settings(max_examples=300)
@given(st.data())
def test_python_paths_agree_with_the_strict_scanner_on_damaged_simulated_events(data) -> None:
    assert_reads_as_the_strict_scanner(damage(data.draw(st.sampled_from(_simulated_events())), data))


def test_an_on_chain_event_ending_in_the_fids_tag_is_refused_as_the_strict_scanner_does() -> None:
    """Its fid must not be read from the bytes after it (found in review: fid 96, the next tag)."""
    damaged = bytes.fromhex("0809108180015a030a0140" "60017001")
    with pytest.raises(WireError, match="truncated varint"):
        scan_hub_event(damaged)
    assert_reads_as_the_strict_scanner(damaged)
