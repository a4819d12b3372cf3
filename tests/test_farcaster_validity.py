"""Property tests for Farcaster message validity (hash and signature over the wire bytes)."""

from __future__ import annotations

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_sign, crypto_sign_seed_keypair

from weir.codecs.farcaster_keys import scan_hub_event
from weir.codecs.farcaster_validity import InvalidMessage, hub_event_invalidity, message_hash, verify_message
from weir.codecs.protowire import WireError, bytes_field, encode_varint, varint_field

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def build_message(
    seed: bytes, fid: int, msg_type: int, timestamp: int, text: str, *, with_data: bool, with_data_bytes: bool
) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """A signed Message, and where its hash/signature/signer/data_bytes values sit in it."""
    public_key, secret_key = crypto_sign_seed_keypair(seed)
    data = (
        varint_field(1, msg_type)
        + varint_field(2, fid)
        + varint_field(3, timestamp)
        + varint_field(4, 1)
        + bytes_field(5, bytes_field(4, text.encode()))
    )
    hash_ = blake3.blake3(data).digest(20)
    signature = crypto_sign(hash_, secret_key)[:64]
    parts: list[tuple[str | None, bytes]] = []
    if with_data:
        parts.append((None if with_data_bytes else "data", bytes_field(1, data)))
    parts += [
        ("hash", bytes_field(2, hash_)),
        (None, varint_field(3, 1)),
        ("signature", bytes_field(4, signature)),
        (None, varint_field(5, 1)),
        ("signer", bytes_field(6, public_key)),
    ]
    if with_data_bytes:
        parts.append(("data_bytes", bytes_field(7, data)))
    out = b""
    spans: dict[str, tuple[int, int]] = {}
    for name, field in parts:
        if name is not None:
            value_len = {"hash": 20, "signature": 64, "signer": 32}.get(name, len(data))
            spans[name] = (len(out) + len(field) - value_len, len(out) + len(field))
        out += field
    return out, spans


messages = st.builds(
    build_message,
    seed=st.binary(min_size=32, max_size=32),
    fid=st.integers(1, 2**32 - 1),
    msg_type=st.sampled_from([1, 2, 3, 4, 5, 6, 7, 11]),
    timestamp=st.integers(0, 2**32 - 1),
    text=st.text(max_size=80),
    with_data=st.booleans(),
    with_data_bytes=st.just(True),
) | st.builds(
    build_message,
    seed=st.binary(min_size=32, max_size=32),
    fid=st.integers(1, 2**32 - 1),
    msg_type=st.sampled_from([1, 3, 5]),
    timestamp=st.integers(0, 2**32 - 1),
    text=st.text(max_size=80),
    with_data=st.just(True),
    with_data_bytes=st.just(False),
)


@SETTINGS
@given(messages)
def test_signed_messages_verify(built: tuple[bytes, dict[str, tuple[int, int]]]) -> None:
    raw, _ = built
    verified = verify_message(raw)
    assert len(verified.hash) == 20
    assert verified.hash == blake3.blake3(verified.data_bytes).digest(20)


@SETTINGS
@given(messages, st.sampled_from(["hash", "signature", "signer", "data_bytes"]), st.data())
def test_any_single_byte_flip_is_rejected(built: tuple[bytes, dict[str, tuple[int, int]]], part: str, data: st.DataObject) -> None:
    raw, spans = built
    if part == "data_bytes" and part not in spans:
        part = "data"
    start, end = spans[part]
    index = data.draw(st.integers(start, end - 1), label="index")
    flip = data.draw(st.integers(1, 255), label="xor")
    corrupted = bytearray(raw)
    corrupted[index] ^= flip
    with pytest.raises(InvalidMessage):
        verify_message(bytes(corrupted))


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes_never_crash(raw: bytes) -> None:
    try:
        verify_message(raw)
    except (InvalidMessage, WireError):
        pass


@SETTINGS
@given(messages, st.data())
def test_truncations_never_crash(built: tuple[bytes, dict[str, tuple[int, int]]], data: st.DataObject) -> None:
    raw, _ = built
    original = verify_message(raw)
    cut = data.draw(st.integers(0, len(raw) - 1))
    try:
        verified = verify_message(raw[:cut])
    except (InvalidMessage, WireError):
        return
    # Cutting exactly before data_bytes leaves a message signed over its data field: still valid.
    assert verified.hash == original.hash


def test_wrong_schemes_are_rejected() -> None:
    raw, _ = build_message(b"\x07" * 32, 5, 1, 100, "hi", with_data=False, with_data_bytes=True)
    with pytest.raises(InvalidMessage, match="hash_scheme"):
        verify_message(raw.replace(varint_field(3, 1), varint_field(3, 2), 1))
    with pytest.raises(InvalidMessage, match="signature_scheme"):
        verify_message(raw.replace(varint_field(5, 1), varint_field(5, 2), 1))


# -- keys against the signed message (review finding: a valid message credited to another fid) --

def _t(field: int, wire: int) -> bytes:
    return encode_varint((field << 3) | wire)


def _ld(field: int, value: bytes) -> bytes:
    return _t(field, 2) + encode_varint(len(value)) + value


def _forgeries() -> dict[str, bytes]:
    from nacl.signing import SigningKey

    key = SigningKey(b"\x05" * 32)
    real = _t(1, 0) + b"\x01" + _t(2, 0) + encode_varint(1111) + _t(3, 0) + b"\x64" + _t(4, 0) + b"\x01"
    digest = message_hash(real)
    signed_tail = (_ld(2, digest) + _t(3, 0) + b"\x01" + _ld(4, key.sign(digest).signature) + _t(5, 0) + b"\x01"
                   + _ld(6, bytes(key.verify_key)))
    fake = _t(1, 0) + b"\x01" + _t(2, 0) + encode_varint(666)
    head = _t(1, 0) + b"\x01" + _t(2, 0) + b"\x09"  # MERGE_MESSAGE, id 9
    return {
        "honest": head + _ld(3, _ld(1, _ld(1, real) + signed_tail + _ld(7, real))),
        "data says another fid than the signed data_bytes": head + _ld(3, _ld(1, _ld(1, fake) + signed_tail + _ld(7, real))),
        "a MERGE_MESSAGE whose body is a merge failure": head + _ld(13, _ld(1, _ld(1, fake) + _ld(2, b"\x09" * 20))),
        "a valid body, then an unverified one": head + _ld(3, _ld(1, _ld(1, real) + signed_tail))
        + _ld(13, _ld(1, _ld(1, fake) + _ld(2, b"\x09" * 20))),
        "the message twice": head + _ld(3, _ld(1, _ld(1, real) + signed_tail) + _ld(1, _ld(1, real) + signed_tail)),
    }


@pytest.mark.parametrize("name", list(_forgeries()))
def test_the_keys_an_event_is_routed_by_are_the_signed_messages(name: str) -> None:
    event = _forgeries()[name]
    verdict = hub_event_invalidity(event, scan_hub_event(event))
    if name == "honest":
        assert verdict is None
        assert scan_hub_event(event).fid == 1111
    else:
        assert verdict is not None, name
