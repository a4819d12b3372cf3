"""JSON-RPC framing (sans-IO): ids, batches answered in any order, errors, malformed input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weir.codecs.jsonrpc import (
    LIMIT_EXCEEDED,
    ErrorReply,
    JsonRpcClientProtocol,
    JsonRpcError,
    Notification,
    ProtocolError,
    Response,
    from_quantity,
    parse_requests,
    to_quantity,
)


@given(st.lists(st.integers(0, 1 << 64), min_size=1, max_size=30), st.randoms())
def test_batch_replies_in_any_order_are_matched_by_id(values, rnd):
    client = JsonRpcClientProtocol()
    ids, text = client.batch([("echo", [v]) for v in values])
    requests, is_batch = parse_requests(text)
    assert is_batch and [r.id for r in requests] == ids
    replies = [{"jsonrpc": "2.0", "id": r.id, "result": r.params[0]} for r in requests]
    rnd.shuffle(replies)
    events = client.receive(json.dumps(replies))
    assert {e.id: e.result for e in events} == dict(zip(ids, values))
    assert client.pending == 0


def test_error_reply_names_the_method_and_knows_too_large():
    client = JsonRpcClientProtocol()
    id_, _ = client.request("eth_getLogs", [{}])
    (event,) = client.receive(json.dumps({"jsonrpc": "2.0", "id": id_, "error": {"code": LIMIT_EXCEEDED, "message": "query returned more than 10000 results"}}))
    assert isinstance(event, ErrorReply) and event.error.too_large
    assert str(event.error) == "eth_getLogs: JSON-RPC error -32005: query returned more than 10000 results"


def test_notifications_and_late_replies():
    client = JsonRpcClientProtocol()
    id_, _ = client.request("eth_blockNumber")
    client.forget([id_])
    assert client.receive(json.dumps({"jsonrpc": "2.0", "id": id_, "result": "0x1"})) == []  # abandoned: dropped
    (push,) = client.receive('{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"0x1","result":{}}}')
    assert isinstance(push, Notification) and push.params["subscription"] == "0x1"
    id2, _ = client.request("eth_chainId")
    assert client.receive(json.dumps({"jsonrpc": "2.0", "id": id2, "result": "0x1"})) == [Response(id=id2, method="eth_chainId", result="0x1")]


@pytest.mark.parametrize("message, match", [
    ("{not json", "invalid JSON"),
    ('{"id":1,"result":1}', "not JSON-RPC 2.0"),
    ('{"jsonrpc":"2.0","id":"a","result":1}', "integer ids"),
    ("[]", "empty batch"),
    ('{"jsonrpc":"2.0","id":1,"error":"boom"}', "malformed error object"),
])
def test_malformed_messages_raise_one_line_protocol_errors(message, match):
    client = JsonRpcClientProtocol()
    client.request("x")
    with pytest.raises(ProtocolError, match=match) as info:
        client.receive(message)
    assert "\n" not in str(info.value)


def test_oversized_message_is_refused():
    with pytest.raises(ProtocolError, match="above the 10-byte limit"):
        JsonRpcClientProtocol(max_message=10).receive("[" + "1," * 10 + "1]")


def test_server_side_parsing():
    with pytest.raises(JsonRpcError) as info:
        parse_requests("nope")
    assert info.value.code == -32700
    requests, is_batch = parse_requests('[{"jsonrpc":"2.0","id":1,"method":"a"}, 5]')
    assert is_batch and requests[0].method == "a" and isinstance(requests[1], JsonRpcError)


@given(st.integers(0, 1 << 256))
def test_quantities_round_trip(n):
    assert from_quantity(to_quantity(n)) == n


@pytest.mark.parametrize("bad", ["0x", "12", "0xZZ", None, 5])
def test_bad_quantity_names_the_field(bad):
    with pytest.raises(ProtocolError, match="block.number: expected a 0x-prefixed hex quantity"):
        from_quantity(bad, "block.number")
