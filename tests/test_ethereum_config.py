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
