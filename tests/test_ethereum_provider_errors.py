"""Which provider errors mean "this eth_getLogs range is too large" (split it), read from real answers.

The messages are the ones providers send (quoted in their users' bug reports); a rate limit, which
some send with the same code, must not be read as a size refusal: splitting would only send more.
"""

from __future__ import annotations

import json

import pytest

from weir.actors.ethereum import BlockLost, BlockUnavailable, LogsRefused, is_transient
from weir.codecs.jsonrpc import JsonRpcClientProtocol, JsonRpcError

TOO_LARGE = [
    (-32005, "query returned more than 10000 results", None),  # geth, Infura
    (-32602, ("Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range and no limit "
              "on the response size, or you can request any block range with a cap of 10K logs in the response. Based "
              "on your parameters and the response size limit, this block range should work: [0x0, 0x87fe9]"), None),  # Alchemy
    (-32600, ("You can make eth_getLogs requests with up to a 500 block range. Based on your parameters, this block "
              "range should work: [0x123c9b2, 0x123cba5]"), None),  # Alchemy, free tier
    (-32602, "eth_getLogs and eth_newFilter are limited to a 10,000 blocks range", None),  # QuickNode
    (-32614, "eth_getLogs is limited to a 10,000 range", None),  # QuickNode
    (-32602, "range 1000000 exceeds limit of 10000", None),  # Infura
    (-32600, "block range is too wide", None),  # Ankr
    (-32602, "query exceeds max results 20000, retry with the range 25766988-25775072", None),  # reth
    (-32602, "query exceeds max block range 5000", None),  # reth
    (-32000, "exceed maximum block range: 5000", None),  # BSC
    (-32000, "block range is larger than max block range, block range = 5120, max block range = 5000", None),
    (-32600, "block range too high", None),
    (-32008, "Response is too big", "Exceeded max limit of 10485760"),  # zkSync
    (-32602, "invalid params", {"error_id": "4ed94073", "payload": "range 9009594 is bigger than range limit 2000"}),  # Tenderly
    (-32000, "logs matched by query exceeds limit of 10000", None),  # Arbitrum
    (-32602, "Query returned more than 10000 results. Try with this block range [0x0, 0x30f].", None),  # zkSync
    (-32000, "Too many logs requested. Max logs per response is 10000.", None),  # Nethermind-style
]

NOT_TOO_LARGE = [
    (-32005, "daily request count exceeded, request rate limited", None),  # Infura rate limit
    (-32005, "project ID request rate exceeded", None),
    (429, "Your app has exceeded its compute units per second capacity.", None),  # Alchemy
    (-32000, "unknown block", None),
    (-32602, "invalid argument 0: hex string without 0x prefix", None),
    (-32601, "the method eth_getLogs does not exist/is not available", None),
]


@pytest.mark.parametrize("code, message, data", TOO_LARGE, ids=[m[:40] for _, m, _ in TOO_LARGE])
def test_providers_refusals_of_a_range_are_too_large(code, message, data):
    assert JsonRpcError(code, message, data, "eth_getLogs").too_large


@pytest.mark.parametrize("code, message, data", NOT_TOO_LARGE, ids=[m[:40] for _, m, _ in NOT_TOO_LARGE])
def test_rate_limits_and_other_errors_are_not_too_large(code, message, data):
    assert not JsonRpcError(code, message, data, "eth_getLogs").too_large


def test_a_refusal_read_off_the_wire_with_its_data_member_is_too_large():
    client = JsonRpcClientProtocol()
    id_, _ = client.request("eth_getLogs", [{"fromBlock": "0x0", "toBlock": "0x895440"}])
    (event,) = client.receive(json.dumps({"jsonrpc": "2.0", "id": id_, "error": {
        "code": -32602, "message": "invalid params", "data": {"payload": "range 9009594 is bigger than range limit 2000"}}}))
    assert event.error.too_large


def test_what_retrying_cannot_fix_is_not_transient():
    # A node that keeps refusing one block's logs, or that pruned a block weir must retract: a
    # reconnect loop would only hide them.
    assert not is_transient(LogsRefused("block refused")) and not is_transient(BlockLost("block lost"))
    assert is_transient(BlockUnavailable("not yet", "0x" + "ab" * 32))
