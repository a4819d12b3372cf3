"""[[ethereum.chains]] arrays of tables load, and bad values are named with where they came from."""

from __future__ import annotations

import json

import pytest

from weir.config import ConfigError, load_config


def test_array_of_tables_from_toml(tmp_path):
    path = tmp_path / "weir.toml"
    path.write_text(
        '[ethereum]\nenabled = true\nabis = ["Deposit(address indexed who, uint256 amount)"]\n'
        '[[ethereum.chains]]\nchain_id = 1\nurl = "wss://a.example/ws"\nconfirmations = 12\n'
        '[[ethereum.chains]]\nchain_id = 10\nurl = "ws://b.example:8546"\n'
    )
    config = load_config(path, environ={})
    assert [(c.chain_id, c.confirmations) for c in config.ethereum.chains] == [(1, 12), (10, 0)]
    assert config.ethereum.enabled and not load_config(environ={}).ethereum.enabled


@pytest.mark.parametrize("chains, match", [
    ('[{"chain_id": 1, "url": "http://x"}]', r"ethereum.chains: \[0\] \(chain_id 1\): url: expected ws://"),
    ('[{"chain_id": 1, "url": "ws://x", "colour": 1}]', r"ethereum.chains\[0\].colour: unknown setting"),
    ('[{"chain_id": "one", "url": "ws://x"}]', r"ethereum.chains\[0\].chain_id: expected an integer"),
    ('[{"chain_id": 1, "url": "ws://x"}, {"chain_id": 1, "url": "ws://y"}]', "configured twice"),
    ("{not json", "expected a JSON array of objects"),
])
def test_bad_chains_are_named(chains, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(environ={"WEIR_ETHEREUM_CHAINS": chains})
    assert "\n" not in str(info.value) and "environment WEIR_ETHEREUM_CHAINS" in str(info.value)


def test_event_abis_from_the_environment_as_a_json_array():
    # An ABI has commas of its own: the comma-separated form cannot carry one; a JSON array can.
    abi = "Approval(address indexed owner, address indexed spender, uint256 value)"
    config = load_config(environ={"WEIR_ETHEREUM_ABIS": json.dumps([abi])})
    assert config.ethereum.abis == (abi,)
    with pytest.raises(ConfigError, match=r"ethereum.abis: .*\(from environment WEIR_ETHEREUM_ABIS\)"):
        load_config(environ={"WEIR_ETHEREUM_ABIS": "[not json"})


@pytest.mark.parametrize("abi, why", [
    ("E(foo a)", "type 'foo': not an ABI type eth-abi can decode"),
    ("E(uint7 a)", "integer size out of bounds"),
    ("E((address who, foo what) s)", "type 'foo'"),
    ("E(tuple s)", "type 'tuple'"),
])
def test_event_abis_with_types_eth_abi_does_not_know_fail_at_load_naming_the_field(abi, why):
    # Accepted, such an ABI would decode nothing, silently.
    with pytest.raises(ConfigError) as info:
        load_config(environ={"WEIR_ETHEREUM_ABIS": json.dumps(["Deposit(address indexed who, uint256 amount)", abi])})
    message = str(info.value)
    assert message.startswith(f"ethereum.abis: event ABI {abi!r}: parameter 0") and why in message, message
    assert "\n" not in message and message.endswith("(from environment WEIR_ETHEREUM_ABIS)")


def test_event_abis_with_structs_load_with_their_canonical_signature():
    from weir.codecs.ethereum_logs import EventAbi

    abi = "Filled(bytes32 indexed id, (address maker, uint amount)[] fills)"
    config = load_config(environ={"WEIR_ETHEREUM_ABIS": json.dumps([abi])})
    assert EventAbi.parse(config.ethereum.abis[0]).signature == "Filled(bytes32,(address,uint256)[])"


TRANSFER = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
RECEIVER = "0x" + "00" * 12 + "ab" * 20


def test_topics_are_topic0_alternatives_or_positions_with_any():
    flat = load_config(environ={"WEIR_ETHEREUM_ENABLED": "true", "WEIR_ETHEREUM_CHAINS": json.dumps(
        [{"chain_id": 1, "url": "ws://a", "topics": [TRANSFER, RECEIVER]}])})
    assert flat.ethereum.chains[0].topics == ((TRANSFER, RECEIVER),)  # one position: topic0 is either
    positional = load_config(environ={"WEIR_ETHEREUM_ENABLED": "true", "WEIR_ETHEREUM_CHAINS": json.dumps(
        [{"chain_id": 1, "url": "ws://a", "topics": [[TRANSFER], None, RECEIVER, []]}])})
    assert positional.ethereum.chains[0].topics == ((TRANSFER,), None, (RECEIVER,), None)


def test_positional_topics_from_toml_use_an_empty_list_for_any(tmp_path):
    path = tmp_path / "weir.toml"  # TOML has no null
    path.write_text('[ethereum]\nenabled = true\n[[ethereum.chains]]\nchain_id = 1\nurl = "ws://a"\n'
                    f'topics = [["{TRANSFER}"], [], ["{RECEIVER}", "{RECEIVER.upper().replace("0X", "0x")}"]]\n')
    assert load_config(path, environ={}).ethereum.chains[0].topics == ((TRANSFER,), None, (RECEIVER, RECEIVER.upper().replace("0X", "0x")))


@pytest.mark.parametrize("topics, match", [
    ([[TRANSFER], [1]], r"topics: a topic position is a hash, a list of hashes or null, got \[1\]"),
    ([[TRANSFER], None, ["0x12"]], r"topics: expected 0x \+ 64 hex digits, got '0x12'"),
    ([None, None, None, None, [TRANSFER]], r"topics: a log has at most 4 topics, got 5 positions"),
])
def test_bad_positional_topics_are_named(topics, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(environ={"WEIR_ETHEREUM_ENABLED": "true", "WEIR_ETHEREUM_CHAINS": json.dumps(
            [{"chain_id": 1, "url": "ws://a", "topics": topics}])})
    assert "\n" not in str(info.value) and "ethereum.chains" in str(info.value)
