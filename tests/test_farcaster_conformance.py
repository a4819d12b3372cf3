"""Conformance: Snapchain's golden vectors decode with our typed models and verify.

The fixtures are in the repository (tests/fixtures/farcaster, origins in its README); a missing
one fails its test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from weir.codecs.farcaster_models import decode_message, message_to_json
from weir.codecs.farcaster_validity import InvalidMessage, verify_message

from helpers import fixture_file

MANIFEST = fixture_file("farcaster/conformance/manifest.json")  # missing: an error at collection
PARITY_VALID = ["valid_cast_add.bin", "valid_link_add.bin", "valid_reaction_add.bin", "valid_user_data_add.bin"]


def _vectors() -> list[dict]:
    return json.loads(MANIFEST.read_text())["vectors"]


def _message_file(vector: dict) -> Path:
    # The manifest names "messages/<name>.pb"; the files sit beside the manifest.
    return fixture_file(MANIFEST.parent / Path(vector["message_file"]).name)


@pytest.mark.parametrize("vector", _vectors(), ids=lambda v: v["id"])
def test_vector_decodes_and_verifies(vector: dict) -> None:
    raw = _message_file(vector).read_bytes()
    expected = vector["expected"]
    assert raw == bytes.fromhex(expected["message_bytes"])

    message = decode_message(raw)
    assert message.data_bytes == bytes.fromhex(expected["data_bytes"])
    assert message.hash == bytes.fromhex(expected["hash"])
    assert message.signature == bytes.fromhex(expected["signature"])
    assert message.signer == bytes.fromhex(expected["signer"])
    assert message.data is not None
    assert message.data.fid == vector["fid"]
    assert message.data.timestamp == vector["timestamp"]
    assert bytes(message) == raw  # unknown types and bodies survive a round trip
    json.dumps(message_to_json(message))  # JSON-safe, even for types newer than our protos

    verified = verify_message(raw)
    assert verified.hash == bytes.fromhex(expected["hash"])
    assert verified.signer == bytes.fromhex(expected["signer"])
    assert verified.data_bytes == bytes.fromhex(expected["data_bytes"])
    assert verified.fid == vector["fid"]
    assert verified.msg_type == int(message.data.type)


def test_manifest_covers_types_newer_than_our_protos() -> None:
    types = {int(decode_message(_message_file(v).read_bytes()).data.type) for v in _vectors()}
    assert 16 in types  # KeyAdd: not in our MessageType subset, must still decode and verify


@pytest.mark.parametrize("name", PARITY_VALID)
def test_parity_valid_messages_verify(name: str) -> None:
    verified = verify_message(fixture_file(f"farcaster/parity/{name}").read_bytes())
    assert len(verified.hash) == 20
    assert verified.fid > 0


@pytest.mark.parametrize(
    ("name", "reason"),
    [("invalid_hash.bin", "hash mismatch"), ("invalid_signature.bin", "signature does not verify")],
)
def test_parity_invalid_messages_are_rejected(name: str, reason: str) -> None:
    with pytest.raises(InvalidMessage) as excinfo:
        verify_message(fixture_file(f"farcaster/parity/{name}").read_bytes())
    assert reason in excinfo.value.reason
    assert "\n" not in excinfo.value.reason
