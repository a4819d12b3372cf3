"""Secrets never leave: every network runs with credentials in its URL, and none of them appears in
the logs, /metrics, /readyz, /healthz or an error line (docs/security.md).

The real ``weir run`` as a subprocess, the three simulators as processes of their own, and a real
redis-server with an ACL user whose password is in weir's Redis URL. Besides the healthy networks,
two misconfigured chains make errors happen: one whose node serves another chain (a crash loop with
the URL in its exception) and one whose node is not there (reconnects, an open breaker).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from helpers import metrics_url_from, wait_for, weir_args, weir_process
from test_observability import http, samples

from weir.sim.atproto_data import AtprotoSimConfig
from weir.sim.ethereum import EthereumSimConfig
from weir.sim.farcaster_data import SnapchainSimConfig
from weir.sim.process import open_atproto_sim, open_ethereum_sim, open_snapchain_sim
from weir.sinks.keys import partition_keys

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
MARK = "SECRET"  # every credential below contains it; nothing weir prints may
REDIS_USER, REDIS_PASSWORD = "weiruser", "SECRETPASS-redis"
CHAIN, MISMATCHED_CHAIN, ABSENT_CHAIN = 1337, 5, 7


def with_credentials(url: str, *, path: str = "", query: str = "", who: str) -> str:
    """``url`` (scheme://host:port) with a password, and optionally a key path and a secret query."""
    scheme, _, hostport = url.partition("://")
    return f"{scheme}://{who}:SECRETPASS-{who}@{hostport}{path}" + (f"?{query}" if query else "")


def chain(chain_id: int, url: str) -> dict:
    return {"chain_id": chain_id, "url": url, "block_time": 0.05, "connect_timeout": 1, "request_timeout": 2}


async def test_no_credential_of_any_url_reaches_logs_metrics_readyz_or_errors(redis_server, redis_client, tmp_path):
    await redis_client("ACL", "SETUSER", REDIS_USER, "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all")
    redis_url = f"redis://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:{redis_server.port}/0"
    log_path = tmp_path / "weir.log"
    async with (
        open_snapchain_sim(SnapchainSimConfig(shards=1, seed=51, rate=200)) as snapchain,
        open_atproto_sim(AtprotoSimConfig(seed=52, total=2000, rate=200)) as relay,
        open_ethereum_sim(EthereumSimConfig(chain_id=CHAIN, block_time=0.05)) as node,
    ):
        farcaster_url = with_credentials(snapchain.url, who="fc", path="/v3/SECRETINFURA0123456789abcdef01",
                                         query="apikey=SECRET-fc-query")
        atproto_url = with_credentials(relay, who="relay", query="token=SECRET-relay-query")
        chains = [
            chain(CHAIN, with_credentials(node.url, who="eth", path="/v2/SECRETALCHEMY0123456789abcdefXY",
                                          query="api_key=SECRET-eth-query")),
            chain(MISMATCHED_CHAIN, with_credentials(node.url, who="mismatch", path="/v2/SECRETMISMATCH0123456789abcd")),
            chain(ABSENT_CHAIN, with_credentials("ws://127.0.0.1:1", who="absent", path="/SECRETABSENT0123456789abcdefgh",
                                                 query="auth=SECRET-absent-query")),
        ]
        args = weir_args(
            "run", "--redis-url", redis_url, "--farcaster-url", farcaster_url,
            "--set", "farcaster.shards=1", "--set", "farcaster.start=oldest",
            "--set", "atproto.enabled=true", "--set", f"atproto.url={atproto_url}", "--set", "atproto.start=oldest",
            "--set", "ethereum.enabled=true", "--set", f"ethereum.chains={json.dumps(chains)}",
            "--set", "supervision.backoff_initial=0.01", "--set", "supervision.backoff_max=0.2",
            "--set", "supervision.max_restarts=1000", "--set", "supervision.breaker_failures=2",
            "--set", "supervision.breaker_reset=0.2", "--set", "metrics.port=0", "--set", "log_level=DEBUG",
        )  # fmt: skip
        async with weir_process(args, log_path) as process:
            base = await metrics_url_from(log_path)

            async def persisting() -> bool:
                lengths = [await redis_client("XLEN", partition_keys(source, partition).events)
                           for source, partition in (("farcaster", "1"), ("atproto", "firehose-127.0.0.1"),
                                                     ("ethereum", str(CHAIN)))]
                return all(length > 0 for length in lengths)

            await wait_for(persisting, timeout=TIMEOUT, what="every healthy network to persist events")
            pages: dict[str, str] = {}

            async def errors_shown() -> bool:
                """Both broken chains are reported, the absent node's breaker opened, and the
                mismatched chain crashed at least twice (its exception is in the logs)."""
                for path in ("/metrics", "/readyz", "/healthz"):
                    pages[path] = (await http(base, path))[2].decode()
                readyz = json.loads(pages["/readyz"])["partitions"]
                opened = [labels["breaker"] for (name, labels), value in _labelled(pages["/metrics"])
                          if name == "weir_breaker_state" and value == 2]
                crashes = log_path.read_text().count("ChainMismatch")
                return (not readyz[f"ethereum/{ABSENT_CHAIN}"]["ready"] and not readyz[f"ethereum/{MISMATCHED_CHAIN}"]["ready"]
                        and any(":1/" in name for name in opened) and crashes >= 2)

            await wait_for(errors_shown, timeout=TIMEOUT, what="the broken chains' errors to show")
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(TIMEOUT):
                await process.wait()
    logs = log_path.read_text()
    outputs = {"log": logs, **pages}
    for where, text in outputs.items():
        assert MARK not in text, f"a credential in {where}: {_around(text, MARK)}"
    # The URLs were shown (redacted), so the absence above means something.
    assert f'weir_breaker_state{{breaker="ethereum {ABSENT_CHAIN} ws://***@127.0.0.1:1/***?auth=***"}}' in pages["/metrics"]
    assert f'"url": "ws://***@127.0.0.1:{node.port}/v2/***?api_key=***"' in logs  # the healthy chain's connect event
    assert f'"url": "ws://***@127.0.0.1:{relay.rpartition(":")[2]}/xrpc/com.atproto.sync.subscribeRepos"' in logs
    assert "serves chain 1337, configured as chain 5" in logs and "(last error:" in pages["/readyz"]
    assert f"http://127.0.0.1:{snapchain.port}" in logs and "firehose-127.0.0.1" in pages["/metrics"]


def test_config_error_lines_show_no_credential(tmp_path: Path) -> None:
    """A URL weir refuses is quoted in the one-line error: redacted, whichever setting it is in."""
    secret_path = "/v2/SECRETKEY0123456789abcdefghij"
    cases = [
        ("--set", f"farcaster.url=ftp://u:SECRETPASS@h:1{secret_path}"),
        ("--redis-url", f"redis://u:SECRETPASS@h:notaport{secret_path}"),
        ("--set", "atproto.enabled=true", "--set", f"atproto.url=http://u:SECRETPASS@h{secret_path}?token=SECRET"),
        ("--set", "ethereum.enabled=true", "--set",
         'ethereum.chains=[{"chain_id": 1, "url": "http://u:SECRETPASS@h' + secret_path + '?api_key=SECRET"}]'),
        ("--set", 'ethereum.chains={"chain_id": 1, "url": "ws://u:SECRETPASS@h' + secret_path + '"}'),  # not an array
    ]
    for argv in cases:
        result = subprocess.run([sys.executable, "-m", "weir", "run", *argv], capture_output=True, text=True,
                                timeout=60, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("weir: config error:") and MARK not in result.stderr, result.stderr


def _labelled(text: str):
    return [((name, dict(labels)), value) for (name, labels), value in samples(text).items()]


def _around(text: str, needle: str) -> str:
    at = text.index(needle)
    return text[max(0, at - 200): at + 100]
