"""A wss:// node whose certificate is not trusted is refused at once, and named as such
(CERTIFICATE_VERIFY_FAILED, as https:// and rediss:// are), not as a connect timeout."""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trustme

from weir.actors.atproto import open_websocket
from weir.actors.jsonrpc_ws import open_rpc
from weir.config import load_config

CONNECT_TIMEOUT = 10.0


@asynccontextmanager
async def tls_server() -> AsyncIterator[int]:
    """A TLS server for ``localhost`` whose CA nobody trusts; yields its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("localhost").configure_cert(context)

    async def handler(stream: trio.SSLStream) -> None:
        try:
            await stream.do_handshake()
            await stream.receive_some()
        except trio.BrokenResourceError:  # the client refused the certificate
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_ssl_over_tcp, handler, 0, context, host="127.0.0.1"))
        yield listeners[0].transport_listener.socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def connect_ethereum(url: str) -> None:
    async with open_rpc(url, connect_timeout=CONNECT_TIMEOUT, request_timeout=CONNECT_TIMEOUT):
        pass


async def connect_atproto(url: str) -> None:
    settings = load_config(environ={}, overrides={"atproto.url": url, "atproto.connect_timeout": str(CONNECT_TIMEOUT)}).atproto
    async with open_websocket(url, settings):
        pass


@pytest.mark.parametrize("connect", [connect_ethereum, connect_atproto])
async def test_an_untrusted_wss_certificate_is_named_at_once(connect):
    async with tls_server() as port:
        started = trio.current_time()
        with pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):
            await connect(f"wss://localhost:{port}/")
        assert trio.current_time() - started < CONNECT_TIMEOUT / 2, "refused only by the connect timeout"


async def test_weir_run_stops_with_exit_3_on_a_refused_certificate_instead_of_reconnecting(redis_server, tmp_path):
    """A certificate that does not verify is configuration, not a network fault: weir stops after
    the pipeline's restart intensity with one `fatal:` line naming the node, exit code 3."""
    import json

    from helpers import fatal_run_args, run_until_exit

    from weir.errors import EXIT_FATAL

    log_path = tmp_path / "weir.log"
    async with tls_server() as port:
        chains = [{"chain_id": 1, "url": f"wss://localhost:{port}/v2/SECRETKEY0123456789abcdefghij", "start": "0",
                   "connect_timeout": 5}]
        args = fatal_run_args(redis_server.url, "--set", "farcaster.enabled=false", "--set", "ethereum.enabled=true",
                              "--set", f"ethereum.chains={json.dumps(chains)}")
        code, events = await run_until_exit(args, log_path, timeout=60)
    assert code == EXIT_FATAL
    text = log_path.read_text()
    fatal = [e for e in events if e.get("event") == "fatal"]
    assert len(fatal) == 1, fatal
    assert "CERTIFICATE_VERIFY_FAILED" in fatal[0]["msg"] and f"wss://localhost:{port}/v2/***" in fatal[0]["msg"]
    assert not any(e.get("event") == "disconnect" for e in events), "a refused certificate is not a reconnect"
    assert "SECRETKEY" not in text
