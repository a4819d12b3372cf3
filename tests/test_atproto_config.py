"""``[atproto]`` settings that need more than a type: the zstd dictionary is a file path or an http(s) URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from weir.config import ConfigError, load_config


def atproto(**values: str):
    return load_config(environ={}, overrides={f"atproto.{key}": value for key, value in values.items()}).atproto


@pytest.mark.parametrize("url", [
    "https://raw.githubusercontent.com/bluesky-social/jetstream/main/pkg/models/zstd_dictionary",
    "http://127.0.0.1:8080/jetstream/zstd_dictionary",
    "http://[::1]:8080/d?v=2",
])
def test_the_dictionary_may_be_an_http_url(url):
    assert atproto(mode="jetstream", compress="true", zstd_dictionary=url).zstd_dictionary == url


def test_the_dictionary_may_be_a_file(tmp_path: Path):
    path = tmp_path / "zstd_dictionary"
    path.write_bytes(b"\x37\xa4\x30\xec")
    assert atproto(zstd_dictionary=str(path)).zstd_dictionary == str(path)


def test_no_dictionary_setting_is_valid_with_compression():
    """Empty means Bluesky's published dictionary (weir/actors/atproto.py: dictionary_source)."""
    assert atproto(mode="jetstream", compress="true").zstd_dictionary == ""


@pytest.mark.parametrize("value, message", [
    ("ftp://example.org/dictionary", "expected a file path or an http(s):// URL, got 'ftp://example.org/dictionary'"),
    ("https:///zstd_dictionary", "expected http(s)://host[:port]/path, got 'https:///zstd_dictionary'"),
    ("http://example.org:http/d", "expected http(s)://host[:port]/path"),
    ("/no/such/zstd_dictionary", "no such file '/no/such/zstd_dictionary'"),
])
def test_a_bad_dictionary_setting_names_the_field_and_its_origin(value, message):
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"WEIR_ATPROTO_ZSTD_DICTIONARY": value})
    assert str(caught.value).startswith(f"atproto.zstd_dictionary: {message}")
    assert str(caught.value).endswith("(from environment WEIR_ATPROTO_ZSTD_DICTIONARY)")
