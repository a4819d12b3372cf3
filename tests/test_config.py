"""Configuration: precedence TOML < environment < flags, and one-line errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from weir.config import MAINNET_SNAPCHAIN_URL, ConfigError, load_config


def test_defaults_subscribe_to_mainnet_with_embedded_redis() -> None:
    config = load_config(environ={})
    assert config.farcaster.url == MAINNET_SNAPCHAIN_URL
    assert config.redis.url == ""  # embedded
    assert config.farcaster.shards == ()  # discovered with GetInfo


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "weir.toml"
    path.write_text(
        '[redis]\nurl = "redis://file:6379"\n[batch]\nmax_events = 10\nmax_age_ms = 7\n'
        '[farcaster]\nshards = [1]\nfids = [3, 4]\n[farcaster.filter]\nmessage_types = ["CAST_ADD"]\n'
    )
    config = load_config(path, environ={"WEIR_BATCH_MAX_EVENTS": "20", "WEIR_REDIS_URL": "redis://env:6379"},
                         overrides={"batch.max_events": "30"})
    assert config.redis.url == "redis://env:6379"
    assert config.batch.max_events == 30
    assert config.batch.max_age_ms == 7
    assert config.farcaster.shards == (1,)
    assert config.farcaster.fids == frozenset({3, 4})
    assert config.farcaster.message_types == ("CAST_ADD",)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"farcaster.shards": "1,x"}, "farcaster.shards: expected a list of integers, got '1,x' (from command line)"),
        ({"farcaster.shards": "0"}, "farcaster.shards: user shards are numbered from 1, got 0 (from command line)"),
        ({"farcaster.url": "snapchain:3383"}, "farcaster.url: expected http://host:port"),
        ({"redis.url": "http://x"}, "redis.url: expected a redis://"),
        ({"batch.max_events": "0"}, "batch.max_events: must be positive, got 0 (from command line)"),
        ({"batch.eager": "maybe"}, "batch.eager: expected true or false, got 'maybe'"),
        ({"farcaster.message_types": "CAST_ADD,POKE"}, "farcaster.message_types: unknown message type 'POKE'"),
        ({"farcaster.start": "yesterday"}, "farcaster.start: expected 'live', 'oldest' or an event id"),
        ({"nope.x": "1"}, "nope: unknown section (from command line)"),
        ({"redis.colour": "1"}, "redis.colour: unknown setting (from command line)"),
    ],
)
def test_bad_values_name_the_field_and_origin(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, overrides=overrides)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_environment_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"batch.max_bytes: expected an integer, got 'lots' \(from environment WEIR_BATCH_MAX_BYTES\)"):
        load_config(environ={"WEIR_BATCH_MAX_BYTES": "lots"})


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "weir.toml"
    path.write_text("[batch]\nmax_events = 'many'\n")
    with pytest.raises(ConfigError, match=f"batch.max_events: expected an integer, got 'many' \\(from {path}\\)"):
        load_config(path, environ={})
    path.write_text("[batch\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", environ={})


def test_an_unknown_top_level_key_is_named_as_an_unknown_setting(tmp_path: Path) -> None:
    path = tmp_path / "weir.toml"
    path.write_text("log_levle = 'debug'\n")
    with pytest.raises(ConfigError, match=r"^log_levle: unknown setting \(in .*weir.toml\); known at the top level: .*log_level"):
        load_config(path, environ={})
    path.write_text("batch = 3\n")  # a known section given as a value
    with pytest.raises(ConfigError, match=r"^batch: expected a \[batch\] table"):
        load_config(path, environ={})


def test_a_service_with_no_network_is_refused_by_weir_run_but_not_by_load_config(capsys) -> None:
    from weir.cli import main
    from weir.config import require_a_network

    config = load_config(environ={}, overrides={"farcaster.enabled": "false"})  # an embedding program's own networks may run
    with pytest.raises(ConfigError, match="farcaster.enabled: no network is enabled"):
        require_a_network(config)
    assert main(["run", "--set", "farcaster.enabled=false"]) == 2
    assert "weir: config error: farcaster.enabled: no network is enabled" in capsys.readouterr().err


def _numeric_settings() -> list[str]:
    """Every int and float setting (and list of ints) of every section, as section.key."""
    import attrs

    from weir.config import _SECTIONS

    names = []
    for section, cls in _SECTIONS.items():
        for field in attrs.fields(cls):
            kind = str(field.type)
            if kind in ("int", "float") or kind.startswith(("tuple[int", "frozenset[int")):
                names.append(f"{section}.{field.name}")
    return names


@pytest.mark.parametrize("name", _numeric_settings())
def test_every_numeric_setting_refuses_a_negative_value(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, overrides={name: "-1"})
    text = str(info.value)
    assert text.startswith(f"{name}: ") and text.endswith("(from command line)"), text
    assert "-1" in text and "\n" not in text


def _chain_numbers() -> list[str]:
    import attrs

    from weir.config import EthereumChainSettings

    return [f.name for f in attrs.fields(EthereumChainSettings) if str(f.type) in ("int", "float")]


@pytest.mark.parametrize("key", _chain_numbers())
def test_every_numeric_chain_setting_refuses_a_negative_value(key: str) -> None:
    chains = f'[{{"chain_id": 1, "url": "ws://x", "{key}": -1}}]'
    with pytest.raises(ConfigError) as info:
        load_config(environ={"WEIR_ETHEREUM_CHAINS": chains})
    text = str(info.value)
    assert text.startswith("ethereum.chains: [0] (chain_id ") and key in text and "-1" in text, text
    assert text.endswith("(from environment WEIR_ETHEREUM_CHAINS)") and "\n" not in text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"redis.prefix": "a{b"},
         ("redis.prefix: prefix 'a{b' cannot be used in a Redis key: it contains '{' (braces and whitespace are "
         "reserved by the key layout) (from command line)")),
        ({"redis.prefix": ""}, "redis.prefix: prefix must not be empty (from command line)"),
        ({"redis.socket_timeout": "-1"}, "redis.socket_timeout: must be positive, got -1.0 (from command line)"),
        ({"redis.socket_timeout": "0"}, "redis.socket_timeout: must be positive, got 0.0 (from command line)"),
        ({"redis.socket_timeout": "nan"}, "redis.socket_timeout: expected a finite number, got 'nan' (from command line)"),
        ({"farcaster.idle_timeout": "inf"}, "farcaster.idle_timeout: expected a finite number, got 'inf' (from command line)"),
        ({"redis.url": "redis://host:port"}, "redis.url: invalid port in 'redis://host:port' (from command line)"),
        ({"farcaster.url": "http://node:0"}, "farcaster.url: port 0 in 'http://node:0': a node listens on a real port (from command line)"),
        ({"supervision.max_restarts": "-1"}, "supervision.max_restarts: must be at least 0, got -1 (from command line)"),
        ({"supervision.breaker_reset": "31"},
         "supervision.breaker_reset: must be at most supervision.breaker_reset_max (30, the breaker's longest wait), got 31.0 (from command line)"),
        ({"supervision.breaker_reset_max": "0"},
         "supervision.breaker_reset_max: must be positive"),
        ({"supervision.backoff_initial": "2", "supervision.backoff_max": "1"},
         "supervision.backoff_max: must be at least supervision.backoff_initial (2.0), got 1.0 (from command line)"),
        ({"farcaster.fids": "3,-4"}, "farcaster.fids: a fid is an integer from 0 to 2**64-1, got -4 (from command line)"),
        ({"farcaster.start": str(1 << 64)}, f"farcaster.start: expected 'live', 'oldest' or an event id, got '{1 << 64}'"),
        ({"farcaster.start": "²"}, "farcaster.start: expected 'live', 'oldest' or an event id, got '²'"),
        ({"metrics.port": "65536"}, "metrics.port: expected 0 (any free port) to 65535, got 65536 (from command line)"),
        ({".x": "1"}, "'.x': expected SECTION.KEY (or log_level, log_format) (from command line)"),
    ],
)
def test_bad_values_are_refused_with_the_exact_message(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, overrides=overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_top_level_settings_name_their_origin(tmp_path: Path) -> None:
    expected = "log_level: expected DEBUG, INFO, WARNING or ERROR, got 'LOUD' (from {})"
    with pytest.raises(ConfigError) as info:
        load_config(environ={"WEIR_LOG_LEVEL": "LOUD"})
    assert str(info.value) == expected.format("environment WEIR_LOG_LEVEL")
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, overrides={"log_level": "LOUD"}, origins={"log_level": "command line --log-level"})
    assert str(info.value) == expected.format("command line --log-level")
    path = tmp_path / "weir.toml"
    path.write_text('log_format = "xml"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value) == f"log_format: expected auto, text or json, got 'xml' (from {path})"


def test_a_config_file_that_is_a_directory_or_not_utf8_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    assert str(info.value) == f"config file {tmp_path}: is a directory, not a TOML file"
    path = tmp_path / "weir.toml"
    path.write_bytes(b'[redis]\nprefix = "caf\xe9"\n')  # latin-1
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value) == f"config file {path}: not UTF-8 text (byte 0xe9 on line 2); TOML files are UTF-8"


def test_a_toml_float_for_an_integer_setting_is_refused_not_truncated(tmp_path: Path) -> None:
    path = tmp_path / "weir.toml"
    path.write_text("[batch]\nmax_events = 1.5\n")
    with pytest.raises(ConfigError, match=f"batch.max_events: expected an integer, got 1.5 \\(from {path}\\)"):
        load_config(path, environ={})


def test_the_embedded_redis_data_dir_must_be_a_directory(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, overrides={"redis.data_dir": str(file)})
    assert str(info.value) == f"redis.data_dir: {str(file)!r} exists and is not a directory (from command line)"
    with pytest.raises(ConfigError) as info:
        load_config(environ={"WEIR_REDIS_DATA_DIR": str(file / "sub")})
    assert str(info.value) == (f"redis.data_dir: cannot create {str(file / 'sub')!r}: {str(file)!r} is not a directory "
                               "(from environment WEIR_REDIS_DATA_DIR)")
    # With an external Redis the data dir is not used, so it is not checked.
    assert load_config(environ={}, overrides={"redis.data_dir": str(file), "redis.url": "redis://h:1"}).redis.url
    # A directory that does not exist yet is fine: the embedded server creates it.
    assert load_config(environ={}, overrides={"redis.data_dir": str(tmp_path / "a" / "b")}).redis.data_dir


def test_breakers_take_their_longest_wait_from_the_settings() -> None:
    config = load_config(environ={}, overrides={"supervision.breaker_reset": "0.5", "supervision.breaker_reset_max": "1"})
    breaker = config.supervision.breaker("redis")
    assert breaker.name == "redis"
    assert (breaker._base_timeout, breaker._max_timeout) == (0.5, 1.0)


def test_every_registered_network_has_its_config_section_and_name() -> None:
    from weir.config import Config
    from weir.networks import NETWORKS, enabled_networks, network_class

    for name in NETWORKS:
        assert network_class(name).name == name
        assert isinstance(getattr(Config(), name).enabled, bool)
    assert [n.name for n in enabled_networks(Config())] == ["farcaster"]  # the default: mainnet Farcaster


def _run_help() -> str:
    from weir.cli import build_parser

    run = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    return run.format_help()


def test_run_help_states_the_precedence() -> None:
    text = " ".join(_run_help().split())
    assert ("built-in defaults < --config FILE < WEIR_* environment variables < --set SECTION.KEY=VALUE "
            "and the named flags above") in text


def test_run_help_lists_every_setting_as_a_variable_that_is_read() -> None:
    """Each listed WEIR_* variable reaches its setting: a value of -1 is refused naming the variable,
    or it changes the setting; and every setting is listed."""
    import re

    import attrs

    from weir.config import Config

    listed = re.findall(r"\bWEIR_[A-Z0-9_]*[A-Z0-9]\b", _run_help().split("environment variables (")[1])
    sections = {f.name: type(getattr(Config(), f.name)) for f in attrs.fields(Config)}
    every = {f"WEIR_{name.upper()}" for name, kind in sections.items() if not attrs.has(kind)}
    every |= {f"WEIR_{name.upper()}_{g.name.upper()}" for name, kind in sections.items() if attrs.has(kind)
              for g in attrs.fields(kind)}
    assert sorted(listed) == sorted(every)
    default = load_config(environ={})
    for name in listed:
        try:
            config = load_config(environ={name: "-1"})
        except ConfigError as exc:
            assert str(exc).endswith(f"(from environment {name})"), (name, str(exc))
        else:
            assert config != default, f"{name} was ignored"
