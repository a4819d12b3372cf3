"""The wire reader and writer agree with each other and reject malformed input cleanly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weir.codecs.protowire import (
    LEN,
    VARINT,
    WireError,
    bytes_field,
    encode_varint,
    iter_fields,
    read_varint,
    varint_field,
)

uint64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


@given(uint64)
def test_varint_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    assert read_varint(encoded, 0) == (value, len(encoded))
    assert 1 <= len(encoded) <= 10


@given(uint64)
def test_truncated_varint_is_a_wire_error(value: int) -> None:
    encoded = encode_varint(value)
    if len(encoded) > 1:
        with pytest.raises(WireError, match="truncated"):
            read_varint(encoded[:-1], 0)


def test_overlong_varint_is_rejected() -> None:
    with pytest.raises(WireError, match="longer than 10 bytes"):
        read_varint(b"\xff" * 11, 0)


def test_encode_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        encode_varint(-1)
    with pytest.raises(ValueError):
        encode_varint(1 << 64)


fields = st.lists(
    st.one_of(
        st.tuples(st.integers(1, 536_870_911), st.just(VARINT), uint64),
        st.tuples(st.integers(1, 536_870_911), st.just(LEN), st.binary(max_size=40)),
    ),
    max_size=12,
)


@given(fields)
def test_iter_fields_reads_what_was_written(written) -> None:
    buf = b"".join(
        varint_field(number, value) if kind == VARINT else bytes_field(number, value) for number, kind, value in written
    )
    read = []
    for number, wire_type, start, end in iter_fields(buf):
        if wire_type == VARINT:
            read.append((number, wire_type, read_varint(buf, start)[0]))
        else:
            read.append((number, wire_type, buf[start:end]))
    assert read == written


@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_reader(data: bytes) -> None:
    try:
        for _ in iter_fields(data):
            pass
    except WireError:
        pass
