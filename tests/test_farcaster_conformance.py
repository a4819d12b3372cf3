"""Conformance: Snapchain's golden vectors decode with our typed models and verify.

The fixtures live outside the repository (``../shared/fixtures`` beside the checkout, or
``$WEIR_FIXTURES``); without them these tests skip.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from weir.codecs.farcaster_models import decode_message, message_to_json
from weir.codecs.farcaster_validity import InvalidMessage, verify_message


def _fixtures_root() -> Path:
    override = os.environ.get("WEIR_FIXTURES")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


FARCASTER = _fixtures_root() / "farcaster"
MANIFEST = FARCASTER / "conformance" / "manifest.json"
PARITY = FARCASTER / "parity"

pytestmark = pytest.mark.skipif(
    not MANIFEST.is_file(),
    reason=f"Farcaster fixtures not found at {FARCASTER} (set WEIR_FIXTURES to the fixtures folder)",
)


def _vectors() -> list[dict]:
    if not MANIFEST.is_file():
        return []
    return json.loads(MANIFEST.read_text())["vectors"]


def _message_file(vector: dict) -> Path:
    # The manifest names "messages/<name>.pb"; the files sit beside the manifest.
    named = MANIFEST.parent / vector["message_file"]
    return named if named.is_file() else MANIFEST.parent / Path(vector["message_file"]).name


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


@pytest.mark.parametrize("path", sorted(PARITY.glob("valid_*.bin")) if PARITY.is_dir() else [], ids=lambda p: p.name)
def test_parity_valid_messages_verify(path: Path) -> None:
    verified = verify_message(path.read_bytes())
    assert len(verified.hash) == 20
    assert verified.fid > 0


@pytest.mark.parametrize(
    ("name", "reason"),
    [("invalid_hash.bin", "hash mismatch"), ("invalid_signature.bin", "signature does not verify")],
)
def test_parity_invalid_messages_are_rejected(name: str, reason: str) -> None:
    with pytest.raises(InvalidMessage) as excinfo:
        verify_message((PARITY / name).read_bytes())
    assert reason in excinfo.value.reason
    assert "\n" not in excinfo.value.reason
