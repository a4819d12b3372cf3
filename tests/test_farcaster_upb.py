"""The C decoder's keys (weir/codecs/farcaster_upb.py) are the strict scanner's, or it steps aside.

Properties: on the typed encodings of every event shape, upb either gives exactly the strict
scanner's keys or returns None (the scanner decides); on damaged and spliced bytes (flips, cuts,
two encodings concatenated, which protobuf reads as a merge) the same holds, and wherever upb gives
keys the strict scanner accepts the bytes too. The common shapes really take the C path. The
descriptor set upb reads has the betterproto2 models' fields.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import weir.protos.snapchain as models
from weir.codecs import farcaster_upb
from weir.codecs.farcaster_keys import scan_hub_event_strict
from weir.codecs.farcaster_upb import upb_keys
from weir.codecs.protowire import WireError, encode_varint
from weir.protos.snapchain import HubEvent, HubEventType, MergeMessageBody, Message, MessageData, MessageType

from test_farcaster_keys import hub_events


def strict_tuple(buf: bytes):
    keys = scan_hub_event_strict(buf)
    return (keys.event_type, keys.event_id, keys.shard, keys.block_number, keys.timestamp, keys.fid, keys.msg_type,
            keys.msg_hash)


def agrees(buf: bytes) -> bool:
    """upb's keys are the strict scanner's, or upb stepped aside; True when upb gave keys."""
    found = upb_keys(buf)
    if found is None:
        return False
    try:
        expected = strict_tuple(buf)
    except WireError as exc:  # upb must never accept what the scanner explains as malformed...
        if re.search(r"unsupported wire type [34]\b", str(exc)):
            return True  # ...but an unknown group, which upb (and prost) skip: the one known difference
        raise AssertionError(f"upb read keys {found} from bytes the strict scanner refuses: {exc}") from None
    assert found == expected
    return True


@settings(max_examples=300)
@given(hub_events())
def test_typed_encodings_read_alike_and_common_shapes_take_the_c_path(case) -> None:
    event, _ = case
    took_c_path = agrees(bytes(event))
    # MERGE_FAILURE (field 13) is written before block_number (12) by betterproto2 (and by prost,
    # at its oneof's lowest tag), after it by upb: those events take the scanner's path.
    body = event.merge_message_body or event.prune_message_body or event.revoke_message_body
    if body is not None and body.message.data is not None:
        assert took_c_path  # the hot path's events: a message with its data
    proof = event.merge_username_proof_body
    if proof is not None and proof.username_proof_message.data is not None:
        assert took_c_path
    if event.merge_on_chain_event_body is not None:
        assert took_c_path


@settings(max_examples=500)
@given(hub_events(), hub_events(), st.data())
def test_damaged_and_spliced_bytes_read_alike_or_step_aside(first, second, data) -> None:
    payload = bytearray(bytes(first[0]))
    how = data.draw(st.sampled_from(["flip", "cut", "splice", "splice-body"]))
    if how == "flip" and payload:
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    elif how == "cut":
        del payload[data.draw(st.integers(0, len(payload))):]
    elif how == "splice":  # protobuf reads two encodings back to back as one merged message
        payload += bytes(second[0])
    else:  # a second body of the same event: the oneof's last body wins in upb
        payload += bytes(second[0])[-data.draw(st.integers(1, len(bytes(second[0])))):]
    agrees(bytes(payload))


def _merge_event(data: MessageData, **event_fields) -> HubEvent:
    message = Message(data=data, hash=b"\x07" * 20, hash_scheme=1, signature=b"\x01" * 64, signature_scheme=1,
                      signer=b"\x02" * 32)
    return HubEvent(type=HubEventType.MERGE_MESSAGE, id=(5 << 14) | 1, block_number=5,
                    merge_message_body=MergeMessageBody(message=message), **event_fields)


def test_a_message_data_sent_twice_is_left_to_the_scanner() -> None:
    """upb would merge two ``data`` fields (a fid from one, the signed bytes of the other)."""
    event = bytes(_merge_event(MessageData(type=MessageType.CAST_ADD, fid=42, timestamp=1, network=1)))
    second_data = bytes(MessageData(type=MessageType.CAST_ADD, timestamp=2, network=1))  # no fid
    # Append, inside the message, a second `data` field: rebuild the nesting lengths by hand.
    message = bytes(Message(data=MessageData(type=MessageType.CAST_ADD, fid=42, timestamp=1, network=1), hash=b"\x07" * 20))
    message += b"\x0a" + bytes([len(second_data)]) + second_data
    body = b"\x0a" + bytes([len(message)]) + message
    spliced = bytes(HubEvent(type=HubEventType.MERGE_MESSAGE, id=(5 << 14) | 1)) + b"\x1a" + bytes([len(body)]) + body
    assert upb_keys(event) is not None
    assert upb_keys(spliced) is None
    assert scan_hub_event_strict(spliced).fid == 0  # the last data, whole: as the verifier hashes it


@pytest.mark.parametrize("raw, why", [
    (bytes(HubEvent(type=HubEventType.MERGE_MESSAGE, id=9)) + b"\x70\x81\x80\x80\x80\x10", "shard_index wider than uint32"),
    (b"\x08" + b"\xff" * 9 + b"\x01" + b"\x10\x09", "negative event type"),
    (b"\x10\x09" + b"\x10\x09", "id sent twice"),
    (b"\x10\x89\x00", "non-canonical varint"),
    (b"\x08\x01", "no id"),
])
def test_shapes_the_c_path_leaves_to_the_scanner(raw: bytes, why: str) -> None:
    assert upb_keys(raw) is None, why


def test_data_bytes_without_data_is_left_to_the_scanner() -> None:
    data = MessageData(type=MessageType.CAST_ADD, fid=42, timestamp=1, network=1)
    event = HubEvent(type=HubEventType.MERGE_MESSAGE, id=9,
                     merge_message_body=MergeMessageBody(message=Message(data_bytes=bytes(data), hash=b"\x07" * 20)))
    assert upb_keys(bytes(event)) is None
    assert scan_hub_event_strict(bytes(event)).fid == 42


def squash(name: str) -> str:
    """betterproto2 snake-cases field names (``peerId`` -> ``peer_id``)."""
    return name.replace("_", "").lower()


def test_the_descriptor_set_has_the_models_fields() -> None:
    """weir/protos/snapchain.binpb and the betterproto2 models come from the same .proto files."""
    pool = farcaster_upb.HubEvent.DESCRIPTOR.file.pool
    checked = 0
    for name, model in inspect.getmembers(models, inspect.isclass):
        if not dataclasses.is_dataclass(model):
            continue
        descriptor = pool.FindMessageTypeByName(name)
        expected = {(squash(f.name), f.metadata["betterproto"].number) for f in dataclasses.fields(model)}
        assert {(squash(f.name), f.number) for f in descriptor.fields} == expected, name
        checked += 1
    assert checked >= 20


NEG5 = b"\xff\xff\xff\xff\x0f"  # an enum of -1 in 5 bytes: upb re-encodes it in 10


def _tag(field: int, wire: int) -> bytes:
    return encode_varint((field << 3) | wire)


def _ld(field: int, value: bytes) -> bytes:
    return _tag(field, 2) + encode_varint(len(value)) + value


def _padded(value: int, extra: int) -> bytes:
    out = bytearray(encode_varint(value))
    for _ in range(extra):
        out[-1] |= 0x80
        out.append(0)
    return bytes(out)


def test_a_growth_that_pays_for_a_merge_does_not_fool_the_check() -> None:
    """Review finding: with only a length check, a negative enum in 5 bytes (re-encoded in 10)
    balanced a second ``data`` (merged by upb), and upb gave fid 42 where the scanner gives 0."""
    for extra in range(9):
        message = (_ld(1, _tag(1, 0) + b"\x01" + _tag(2, 0) + b"\x2a" + _tag(3, 0) + b"\x01") + _ld(2, b"\x07" * 20)
                   + _tag(3, 0) + NEG5 + _ld(1, _tag(3, 0) + b"\x02"))
        event = _tag(1, 0) + b"\x01" + _tag(2, 0) + _padded(9, extra) + _ld(3, _ld(1, message))
        assert upb_keys(event) is None
        assert scan_hub_event_strict(event).fid == 0


def test_an_unknown_group_is_the_one_known_difference() -> None:
    event = bytes.fromhex("1009a301a401")  # id 9, then an empty group of field 20
    assert upb_keys(event) == (0, 9, 0, 0, 0, 0, 0, b"")
    with pytest.raises(WireError, match="unsupported wire type 3"):
        scan_hub_event_strict(event)
