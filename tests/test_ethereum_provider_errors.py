"""Which provider errors mean "this eth_getLogs range is too large" (split it), read from real answers.

The messages are the ones providers send (quoted in their users' bug reports); a rate limit, which
some send with the same code, must not be read as a size refusal: splitting would only send more.
What retrying cannot fix stops the chain, with one-line messages however the provider words its
errors; a block missing is taken for lost only after enough sessions and time, never while the
node is behind it.
"""

from __future__ import annotations

import json

import pytest
import trio

from weir.actors.ethereum import (PROVIDER_TEXT, UNAVAILABLE_ATTEMPTS, BlockLost, BlockUnavailable, ChainReader,
                                  ChainStats, LogsRefused, NodeBehind, is_transient, one_line, open_rpc)
from weir.codecs.ethereum_logs import LogDecoder
from weir.codecs.jsonrpc import JsonRpcClientProtocol, JsonRpcError
from weir.config import EthereumChainSettings
from weir.sim.ethereum import EthereumSimConfig, serve_ethereum_sim

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
    assert is_transient(NodeBehind("behind", 10, 7))


@pytest.mark.integration
async def test_a_pinned_block_refused_stops_with_one_line_quoting_at_most_200_characters_of_the_provider():
    # A provider's text can span lines (or be a page long); LogsRefused is one log line all the same.
    provider = "query returned more than {limit} results\n\n  <html>\n" + "x" * 1000
    sim_config = EthereumSimConfig(chain_id=37, seed=23, block_time=0.01, logs_per_block=5, history=3, blocks=0,
                                   max_logs=3, cap_pinned=True, range_error_message=provider)
    settings = EthereumChainSettings(chain_id=37, url="ws://unused", block_time=0.01)
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve_ethereum_sim, sim_config)
        reader = ChainReader(settings=settings, decoder=LogDecoder(), stats=ChainStats())
        async with open_rpc(sim.url, connect_timeout=5, request_timeout=5) as rpc:
            with pytest.raises(LogsRefused) as info:
                await reader.logs_by_hash(rpc, sim.chain.canonical[1])
        nursery.cancel_scope.cancel()
    message = str(info.value)
    assert "\n" not in message and "  " not in message and sim.chain.canonical[1] in message
    quoted = message[message.index("(") + 1 : message.index(")")]
    assert quoted.startswith("eth_getLogs: JSON-RPC error -32005: query returned more than 3 results <html> xxx")
    assert len(quoted) == PROVIDER_TEXT and quoted.endswith("…")


def test_one_line_collapses_whitespace_and_cuts_long_text():
    assert one_line(" a\n\tb  c \r\n") == "a b c"
    assert one_line("y" * 500, 10) == "y" * 9 + "…"
    assert one_line("z" * 10, 10) == "z" * 10


async def test_a_block_is_lost_after_enough_sessions_and_long_enough_never_while_the_node_is_behind(mock_clock):
    # The rule of note_unavailable on trio's virtual clock: block_time 2 s, so 10 block times is 20 s.
    reader = ChainReader(settings=EthereumChainSettings(chain_id=1, url="ws://node", block_time=2.0), decoder=LogDecoder(),
                         stats=ChainStats())
    gone = "0x" + "cd" * 32
    missing = BlockUnavailable(f"chain 1: no logs for block {gone}: unknown\n block", gone)
    for _ in range(3 * UNAVAILABLE_ATTEMPTS):  # fast sessions: the count is reached, not the time
        reader.note_unavailable(missing)
        reader.note_unavailable(NodeBehind("behind", 10, 7))  # neither counted nor breaking the run
    mock_clock.jump(reader.lost_after - 0.5)
    reader.note_unavailable(missing)
    mock_clock.jump(0.5)
    with pytest.raises(BlockLost) as info:
        reader.note_unavailable(missing)
    message = str(info.value)
    assert f"in {3 * UNAVAILABLE_ATTEMPTS + 2} connections in a row over 20.0s" in message
    assert "\n" not in message and "unknown block" in message
    # Another block missing starts a new run (count and time).
    other = "0x" + "ef" * 32
    for _ in range(UNAVAILABLE_ATTEMPTS):
        reader.note_unavailable(BlockUnavailable("gone", other))
    mock_clock.jump(reader.lost_after)
    with pytest.raises(BlockLost):
        reader.note_unavailable(BlockUnavailable("gone", other))
