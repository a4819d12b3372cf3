"""The word-by-word event decoder gives what eth-abi gives (values and refusals), on random logs."""

from __future__ import annotations

import json
import re

import pytest
from eth_abi import encode
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from weir.codecs.ethereum_logs import (
    BUILTIN_EVENTS,
    DecodingError,
    EventAbi,
    Log,
    LogDecoder,
    _decode_with,
    _plan,
    parse_log,
)

USER = [
    EventAbi.parse("Flags(bool indexed on, int8 indexed delta, bytes4 sel, int256 amount, uint8 small, bool ok)"),
    EventAbi.parse("Named(string indexed label, bytes32 indexed id, address who, uint128 value)"),
    EventAbi.parse("NoData(address indexed a, uint16 indexed b)"),
]
ABIS = [*BUILTIN_EVENTS, *USER]
DECODER = LogDecoder(USER)


def reference(abi: EventAbi, log: Log):
    try:
        return _decode_with(abi, log)
    except (DecodingError, ValueError, OverflowError):
        return None


# Words that are valid for some types and not for others: small values, all ones (negative ints,
# too large for small uints), padded addresses / fixed bytes, booleans, random.
EDGES = [0, 1, 2, 127, 128, 255, 256, 1 << 15, 1 << 16, (1 << 127) - 1, 1 << 127, 1 << 128, 1 << 159, 1 << 160]
word = st.one_of(
    st.sampled_from(EDGES).map(lambda v: v.to_bytes(32, "big")),
    st.sampled_from(EDGES[1:]).map(lambda v: (-v).to_bytes(32, "big", signed=True)),
    st.integers(10, 13).flatmap(lambda k: st.binary(min_size=32 - k, max_size=32 - k).map(lambda b: bytes(k) + b)),
    st.binary(min_size=1, max_size=32).map(lambda b: b.ljust(32, b"\0")),
    st.binary(min_size=32, max_size=32),
)


def valid_word(type_: str):
    """A word that decodes as ``type_`` (dynamic indexed types: any hash)."""
    if type_ == "address":
        return st.binary(min_size=20, max_size=20).map(lambda b: bytes(12) + b)
    if type_ == "bool":
        return st.sampled_from([0, 1]).map(lambda v: v.to_bytes(32, "big"))
    if type_.startswith("uint") and type_[4:].isdigit():
        return st.integers(0, (1 << int(type_[4:])) - 1).map(lambda v: v.to_bytes(32, "big"))
    if type_.startswith("int") and type_[3:].isdigit():
        bits = int(type_[3:])
        return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1).map(lambda v: v.to_bytes(32, "big", signed=True))
    if type_.startswith("bytes") and type_[5:].isdigit():
        n = int(type_[5:])
        return st.binary(min_size=n, max_size=n).map(lambda b: b.ljust(32, b"\0"))
    return word


def edge_word(type_: str):
    """Words just outside what ``type_`` accepts (and the last ones inside)."""
    if type_ == "address":
        return st.sampled_from([bytes(11) + b"\x01" + bytes(20), bytes(12) + b"\xff" * 20])
    if type_ == "bool":
        return st.sampled_from([2, 1 << 8, 1]).map(lambda v: v.to_bytes(32, "big"))
    if type_.startswith("uint") and type_[4:].isdigit():
        bits = int(type_[4:])
        return st.sampled_from([v for v in (1 << bits, (1 << bits) - 1) if v < 1 << 256]).map(lambda v: v.to_bytes(32, "big"))
    if type_.startswith("int") and type_[3:].isdigit():
        bits = int(type_[3:])
        values = [1 << (bits - 1), -(1 << (bits - 1)) - 1, (1 << (bits - 1)) - 1, -(1 << (bits - 1))]
        return st.sampled_from([v for v in values if -(1 << 255) <= v < 1 << 255]).map(
            lambda v: v.to_bytes(32, "big", signed=True))
    if type_.startswith("bytes") and type_[5:].isdigit():
        n = int(type_[5:])
        return st.sampled_from([b"\x01" * n + b"\x01", b"\x01" * n]).map(lambda b: b[:32].ljust(32, b"\0"))
    return word


@st.composite
def logs(draw):
    abi = draw(st.sampled_from(ABIS))
    # mostly valid words, each replaced by an edge case now and then: both decoders must refuse alike
    def one(param):
        pick = draw(st.integers(0, 9))
        return draw(word) if pick == 0 else draw(edge_word(param.type)) if pick <= 2 else draw(valid_word(param.type))
    topics = [abi.topic0] + ["0x" + one(p).hex() for p in abi.params if p.indexed]
    data_params = [p for p in abi.params if not p.indexed]
    if data_params and data_params[0].type.endswith("]"):  # TransferBatch: eth-abi's own path
        data = b"".join(draw(word) for _ in range(draw(st.integers(0, 6))))
    else:
        data = b"".join(one(p) for p in data_params)
        if data and draw(st.integers(0, 9)) == 0:
            data = data[:-32]  # a word short
    data += draw(st.sampled_from([b"", b"", b"\x01", bytes(5)]))  # trailing bytes (eth-abi ignores them)
    log = Log(block_number=1, block_hash="0x" + "1" * 64, log_index=0, tx_hash="0x" + "2" * 64,
              address="0x" + "3" * 40, topics=tuple(topics), data="0x" + data.hex(), raw={})
    return abi, log


@settings(max_examples=400)
@given(logs())
def test_fast_decoding_equals_eth_abi(case):
    abi, log = case
    fast = DECODER.decode(log)
    slow = reference(abi, log)
    if fast is None or slow is None:
        assert fast == slow
    else:
        assert fast.to_json() == slow.to_json()
        assert fast.args == slow.args


def test_types_eth_abi_must_decode_are_left_to_it():
    assert _plan(EventAbi.parse("Batch(uint256[] ids)")) is None
    assert _plan(EventAbi.parse("Text(string text)")) is None
    assert _plan(EventAbi.parse("Indexed(string indexed text, uint256 v)")) is not None  # only its hash is given


# --- ERC-1155 known answers -------------------------------------------------------------------------
# Logs built by hand the way a contract emits them (topic0 = keccak of the canonical signature, the
# three addresses as 32-byte topics, the rest ABI-encoded by eth-abi), then decoded by LogDecoder.

MAX = 2**256 - 1
OPERATOR, SENDER, RECEIVER = "0x" + "00" * 20, "0x" + "ff" * 20, "0x" + "0123456789abcdef" * 2 + "deadbeef"


def erc1155_log(signature: str, types: list[str], values: list, operator: str, sender: str, receiver: str) -> Log:
    topic0 = "0x" + keccak(text=signature).hex()
    addresses = ["0x" + encode(["address"], [a]).hex() for a in (operator, sender, receiver)]
    return parse_log({"address": "0x" + "44" * 20, "topics": [topic0, *addresses], "data": "0x" + encode(types, values).hex(),
                      "blockNumber": "0x1", "blockHash": "0x" + "11" * 32, "logIndex": "0x0", "transactionHash": "0x" + "22" * 32})


@pytest.mark.parametrize("token_id, value", [(0, 0), (1, MAX), (MAX, 1), (MAX, MAX), (12345, 10**18)])
def test_erc1155_transfer_single_known_answer(token_id, value):
    log = erc1155_log("TransferSingle(address,address,address,uint256,uint256)", ["uint256", "uint256"], [token_id, value],
                      OPERATOR, SENDER, RECEIVER)
    decoded = LogDecoder().decode(log)
    assert decoded is not None
    assert (decoded.event, decoded.standard) == ("TransferSingle", "erc1155")
    assert decoded.args == {"operator": OPERATOR, "from": SENDER, "to": RECEIVER, "id": token_id, "value": value}
    assert json.loads(decoded.to_json()) == {"event": "TransferSingle", "standard": "erc1155", "args": {
        "operator": OPERATOR, "from": SENDER, "to": RECEIVER, "id": str(token_id), "value": str(value)}}


@pytest.mark.parametrize("ids, values", [
    ([], []),
    ([0], [MAX]),
    ([MAX, 0, 7], [1, 0, MAX]),
    (list(range(20)), [MAX - i for i in range(20)]),
], ids=["empty", "one", "edges", "twenty"])
def test_erc1155_transfer_batch_known_answer(ids, values):
    log = erc1155_log("TransferBatch(address,address,address,uint256[],uint256[])", ["uint256[]", "uint256[]"], [ids, values],
                      RECEIVER, OPERATOR, SENDER)
    decoded = LogDecoder().decode(log)
    assert decoded is not None
    assert (decoded.event, decoded.standard) == ("TransferBatch", "erc1155")
    assert {k: list(v) if k in ("ids", "values") else v for k, v in decoded.args.items()} == {
        "operator": RECEIVER, "from": OPERATOR, "to": SENDER, "ids": ids, "values": values}
    assert json.loads(decoded.to_json()) == {"event": "TransferBatch", "standard": "erc1155", "args": {
        "operator": RECEIVER, "from": OPERATOR, "to": SENDER, "ids": [str(i) for i in ids], "values": [str(v) for v in values]}}


# --- user ABIs with structs and fixed-point values ----------------------------------------------------

def test_a_user_event_with_a_struct_array_decodes_with_lower_case_addresses():
    abi = EventAbi.parse("Orders((address maker, uint amount)[] orders, tuple(address,bool) indexed pair, ufixed128x18 price)")
    assert abi.signature == "Orders((address,uint256)[],(address,bool),ufixed128x18)"  # canonical: what topic0 hashes
    maker = "0x" + "ab" * 20
    orders = [(maker, 5), ("0x" + "01" * 20, MAX)]
    pair_hash = "0x" + "77" * 32  # an indexed struct is stored as its hash
    log = parse_log({"address": "0x" + "44" * 20, "topics": [abi.topic0, pair_hash],
                     "data": "0x" + encode(["(address,uint256)[]", "ufixed128x18"], [orders, 15]).hex(),
                     "blockNumber": "0x1", "blockHash": "0x" + "11" * 32, "logIndex": "0x0", "transactionHash": "0x" + "22" * 32})
    decoded = LogDecoder([abi]).decode(log)
    assert decoded is not None and decoded.event == "Orders"
    assert json.loads(decoded.to_json())["args"] == {
        "orders": [[maker, "5"], ["0x" + "01" * 20, str(MAX)]], "pair": pair_hash, "price": "15"}


@pytest.mark.parametrize("text, why", [
    ("E(foo a)", "type 'foo'"),
    ("E(uint7 a)", "integer size out of bounds"),
    ("E(bytes33 a)", "maximum 32 bytes"),
    ("E((address a, foo b) s)", "type 'foo'"),
    ("E(tuple s)", "type 'tuple'"),
    ("E(uint256 a,, uint256 b)", "parameter 1 '': empty parameter"),
    ("E((address,uint256 s)", "unbalanced"),
])
def test_a_user_event_with_a_type_eth_abi_does_not_know_is_refused_naming_it(text, why):
    with pytest.raises(ValueError, match=re.escape(why)) as info:
        EventAbi.parse(text)
    assert str(info.value).startswith(f"event ABI {text!r}") and "\n" not in str(info.value)
