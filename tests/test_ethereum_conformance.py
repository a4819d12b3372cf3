"""Real mainnet JSON-RPC responses (tests/fixtures/ethereum) parse, and decoded transfers match.

A fixture file that is missing fails its test, naming the file (tests/fixtures/README.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from weir.codecs.ethereum_logs import EventAbi, LogDecoder, parse_header, parse_log

from helpers import FIXTURES as ALL_FIXTURES, fixture_file as fixture

FIXTURES = ALL_FIXTURES / "ethereum"


def receipts(fixtures: Path, folder: str):
    paths = sorted((fixtures / folder).glob("web3_response.eth_getTransactionReceipt_*.json"))
    if not paths:
        pytest.fail(f"no eth_getTransactionReceipt fixtures in {fixtures / folder}", pytrace=False)
    for path in paths:
        yield path, json.loads(path.read_text())["result"]


def test_blocks_parse_and_link():
    folder = FIXTURES / "blocks_1755634_1755635"
    a = parse_header(json.loads(fixture(folder / "web3_response.eth_getBlockByNumber_0x1ac9f2_true.json").read_text())["result"])
    b = parse_header(json.loads(fixture(folder / "web3_response.eth_getBlockByNumber_0x1ac9f3_true.json").read_text())["result"])
    assert (a.number, b.number) == (1755634, 1755635) and b.parent_hash == a.hash
    expected = {item["number"]: item for item in map(json.loads, fixture(folder / "expected_blocks.json").read_text().splitlines())}
    assert expected[b.number]["hash"] == b.hash and expected[b.number]["timestamp"] == b.timestamp


@pytest.mark.parametrize("folder", ["blocks_1755634_1755635", "receipts_with_logs"])
def test_logs_parse_as_the_exporter_normalised_them(folder):
    expected = [json.loads(line) for line in fixture(FIXTURES / folder / "expected_logs.json").read_text().splitlines()]
    logs = [parse_log(item, str(path.name)) for path, receipt in receipts(FIXTURES, folder) for item in receipt["logs"]]
    got = sorted(((l.block_hash, l.log_index, l.tx_hash, l.address, list(l.topics), l.data) for l in logs))
    want = sorted(((e["block_hash"], e["log_index"], e["transaction_hash"], e["address"], e["topics"], e["data"]) for e in expected))
    assert got == want


def test_decoded_token_transfers_equal_the_expected_ones():
    check_token_transfers(FIXTURES)


def check_token_transfers(fixtures: Path) -> None:
    folder = "blocks_1755634_1755635"
    expected_path = fixture(fixtures / folder / "expected_token_transfers.json")  # before any work: may fail
    decoder = LogDecoder()
    transfers = []
    for path, receipt in receipts(fixtures, folder):
        for item in receipt["logs"]:
            log = parse_log(item, path.name)
            decoded = decoder.decode(log)
            if decoded is not None and decoded.standard == "erc20":
                transfers.append({
                    "token_address": log.address, "from_address": decoded.args["from"], "to_address": decoded.args["to"],
                    "value": decoded.args["value"], "transaction_hash": log.tx_hash, "log_index": log.log_index,
                    "block_number": log.block_number, "block_hash": log.block_hash,
                })
    expected = [json.loads(line) for line in expected_path.read_text().splitlines()]
    keys = ("token_address", "from_address", "to_address", "value", "transaction_hash", "log_index", "block_number", "block_hash")
    assert transfers == [{k: e[k] for k in keys} for e in expected]


def test_a_missing_expected_file_fails_naming_it(tmp_path):
    # A fixture set without expected_token_transfers.json (the receipts alone): the test fails with
    # the file's name, before any work (never a skip, never a bare FileNotFoundError).
    shutil.copytree(FIXTURES, tmp_path / "ethereum")
    (tmp_path / "ethereum" / "blocks_1755634_1755635" / "expected_token_transfers.json").unlink()
    with pytest.raises(pytest.fail.Exception, match="expected_token_transfers.json is missing"):
        check_token_transfers(tmp_path / "ethereum")


def test_every_receipt_folder_holds_receipts(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(pytest.fail.Exception, match="no eth_getTransactionReceipt fixtures in"):
        list(receipts(tmp_path, "empty"))


def test_user_abi_decodes_and_bad_abi_is_named():
    abi = EventAbi.parse("Deposit(address indexed who, uint256 amount)")
    assert abi.signature == "Deposit(address,uint256)"
    with pytest.raises(ValueError, match="event ABI 'Deposit\\(address indexed indexed a\\)'"):
        EventAbi.parse("Deposit(address indexed indexed a)")
