"""weir.redact: no credential of a URL survives, and what says which server is meant does."""

from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weir.entry import print_redacted_traceback
from weir.logs import JsonFormatter, TextFormatter
from weir.redact import REDACTED, redact_text, redact_url

KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
# Secrets are marked so that they cannot occur by chance in the rest of a generated URL.
keys = st.text(KEY_ALPHABET, min_size=14, max_size=64).map(lambda text: "Zq" + text + "Zq")  # >= 18 chars
long_keys = st.text(KEY_ALPHABET, min_size=20, max_size=64).map(lambda text: "Zq" + text)
passwords = st.text(KEY_ALPHABET + ".~!$&'()*+,;=?#%[]", min_size=1, max_size=40).map(lambda text: "Zq" + text + "Zq")
users = st.text(KEY_ALPHABET, max_size=12)
schemes = st.sampled_from(["http", "https", "ws", "wss", "redis", "rediss"])
hosts = st.sampled_from(["127.0.0.1", "node.example", "[::1]", "eth-mainnet.g.alchemy.com"])
ports = st.one_of(st.none(), st.integers(1, 65535))
words = st.text("abcdefghijklmnopqrstuvwxyz.", min_size=1, max_size=12)
secret_names = st.sampled_from(["api_key", "apikey", "key", "token", "access_token", "secret", "password", "auth", "X-Api-Key"])


def url_of(scheme: str, host: str, port: int | None, *, userinfo: str = "", path: str = "", query: str = "") -> str:
    netloc = (f"{userinfo}@" if userinfo else "") + host + (f":{port}" if port is not None else "")
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


@given(scheme=schemes, host=hosts, port=ports, user=users, password=passwords, version=st.integers(1, 9), short_key=keys,
       long_key=long_keys, plain=words, name=secret_names, value=keys)
def test_no_credential_survives_and_the_server_stays_named(scheme, host, port, user, password, version, short_key,
                                                            long_key, plain, name, value):
    url = url_of(scheme, host, port, userinfo=f"{user}:{password}",
                 path=f"/{plain}/v{version}/{short_key}/{long_key}", query=f"cursor=17&{name}={value}")
    shown = redact_url(url)
    for secret in (password, short_key, long_key, value):
        assert secret not in shown
    parts = urlsplit(shown)
    assert (parts.scheme, parts.hostname, parts.port) == (scheme, host.strip("[]"), port)
    assert f"/{plain}/v{version}/" in shown and "cursor=17" in shown  # harmless parts stay readable
    assert redact_url(shown) == shown  # idempotent: redacting twice changes nothing


@given(scheme=schemes, host=hosts, port=ports, password=passwords, long_key=long_keys,
       before=st.sampled_from(["", "lost (", "at '", 'url="', "to <"]),
       after=st.sampled_from(["", ")", ").", "';", '"', ">", ", retrying", ": refused"]))
def test_urls_inside_text_are_redacted_wherever_they_stand(scheme, host, port, password, long_key, before, after):
    url = url_of(scheme, host, port, userinfo=f"u:{password}", path=f"/{long_key}")
    text = redact_text(f"chain 1: {before}{url}{after} (attempt 3)")
    assert password not in text and long_key not in text
    assert text.startswith(f"chain 1: {before}{scheme}://{REDACTED}@") and text.endswith(f"{after} (attempt 3)")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # The provider forms: Alchemy, Infura, QuickNode, a key after any version segment.
        ("wss://eth-mainnet.g.alchemy.com/v2/abcDEF1234567890abcdef12345678xy", "wss://eth-mainnet.g.alchemy.com/v2/***"),
        ("https://mainnet.infura.io/v3/0123456789abcdef0123456789abcdef", "https://mainnet.infura.io/v3/***"),
        ("wss://name.quiknode.pro/0123456789abcdef0123456789abcdef01234567/", "wss://name.quiknode.pro/***/"),
        ("wss://node.example/v1/short", "wss://node.example/v1/***"),
        # Credentials: the whole userinfo, secret-named query values.
        ("redis://admin:hunter2@h:6379/0", "redis://***@h:6379/0"),
        ("rediss://:hunter2@[::1]:6380/2", "rediss://***@[::1]:6380/2"),
        ("https://KEY@node.example", "https://***@node.example"),
        ("wss://relay.example?token=abc&cursor=5", "wss://relay.example?token=***&cursor=5"),
        ("unix://:pw@/run/redis/redis-server-for-weir.sock?db=0&password=pw",
         "unix://***@/run/redis/redis-server-for-weir.sock?db=0&password=***"),
        ("wss://node.example/ws#0123", "wss://node.example/ws#***"),
        # Nothing secret: unchanged (AT Protocol's cursor and filters, the embedded Redis).
        ("ws://127.0.0.1:9000/xrpc/com.atproto.sync.subscribeRepos?cursor=123",
         "ws://127.0.0.1:9000/xrpc/com.atproto.sync.subscribeRepos?cursor=123"),
        ("wss://jetstream2.us-east.bsky.network/subscribe?wantedCollections=app.bsky.feed.post&cursor=1733420000000000",
         "wss://jetstream2.us-east.bsky.network/subscribe?wantedCollections=app.bsky.feed.post&cursor=1733420000000000"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("https://snapchain.farcaster.xyz:3383", "https://snapchain.farcaster.xyz:3383"),
        # Beyond urllib: nothing of it is shown.
        ("redis://u:pw@[::1", "redis://***"),
    ],
)
def test_known_forms(url, shown):
    assert redact_url(url) == shown


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("weir.test", logging.WARNING, __file__, 1, message, args, None)
    entry.__dict__.update(extra)
    return entry


def test_log_lines_are_redacted_in_the_message_the_fields_and_the_traceback():
    url = "wss://u:hunter2@node.example/v2/abcDEF1234567890abcdef12345678xy"
    line = record("connected to %s", url, url=url, event="connect")
    try:
        raise ConnectionError(f"refused by {url}")
    except ConnectionError:
        import sys

        line.exc_info = sys.exc_info()
    text = JsonFormatter().format(line)
    assert "hunter2" not in text and "abcDEF" not in text
    entry = json.loads(text)
    assert entry["url"] == entry["msg"].removeprefix("connected to ") == "wss://***@node.example/v2/***"
    assert "refused by wss://***@node.example/v2/***" in entry["exc"]
    assert "hunter2" not in TextFormatter().format(record("connected to %s", url))


def test_a_crash_prints_its_traceback_redacted(capsys):
    """The console script's excepthook: a traceback that quotes a URL shows it without credentials."""
    try:
        raise RuntimeError("lost wss://u:hunter2@node.example/v2/abcDEF1234567890abcdef12345678xy")
    except RuntimeError as exc:
        print_redacted_traceback(type(exc), exc, exc.__traceback__)
    printed = capsys.readouterr().err
    assert printed.startswith("Traceback (most recent call last):") and "test_redact.py" in printed
    assert printed.rstrip().endswith("RuntimeError: lost wss://***@node.example/v2/***")
