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


def test_a_service_with_no_network_is_refused() -> None:
    with pytest.raises(ConfigError, match="farcaster.enabled: no network is enabled"):
        load_config(environ={}, overrides={"farcaster.enabled": "false"})
