"""Where the Farcaster source connects: ``GrpcTarget.from_url`` and the channel ``_open_channel`` builds.

``http://`` means plaintext HTTP/2, ``https://`` TLS with ALPN ``h2`` (gRPC needs HTTP/2 to be
negotiated: a TLS connection without ALPN h2 is refused by a real Snapchain node's load balancer).
The channel is inspected, not connected: what it would offer in a TLS handshake is read from the
ClientHello its SSL context produces (in memory, no socket).
"""

from __future__ import annotations

import asyncio
import ssl
import struct

import pytest

from weir.actors.farcaster import GrpcTarget, _open_channel
from weir.codecs.grpc_raw import RawBytesCodec

# -- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("http://127.0.0.1:3383", "127.0.0.1", 3383, False),
        ("https://snapchain.farcaster.xyz:3383", "snapchain.farcaster.xyz", 3383, True),
        ("http://node.example:50051", "node.example", 50051, False),
        ("https://node.example:8443/", "node.example", 8443, True),
        ("HTTPS://Node.Example:443", "node.example", 443, True),  # scheme and host are case-insensitive
        ("http://[::1]:2283", "::1", 2283, False),
    ],
)
def test_from_url_reads_host_port_and_tls_from_the_scheme(url, host, port, tls):
    target = GrpcTarget.from_url(url)
    assert (target.host, target.port, target.tls) == (host, port, tls)


def test_default_ports_are_snapchain_for_http_and_443_for_https():
    assert GrpcTarget.from_url("http://node.example") == GrpcTarget(host="node.example", port=3383, tls=False)
    assert GrpcTarget.from_url("https://node.example") == GrpcTarget(host="node.example", port=443, tls=True)


def test_str_names_the_scheme_it_will_use():
    assert str(GrpcTarget.from_url("https://node.example")) == "https://node.example:443"
    assert str(GrpcTarget.from_url("http://node.example:1")) == "http://node.example:1"


@pytest.mark.parametrize(
    "url",
    [
        "grpc://node.example:3383",  # not a scheme weir knows: no guessing between TLS and plaintext
        "ftp://node.example:3383",
        "node.example:3383",  # no scheme at all
        "127.0.0.1:3383",
        "http://",  # no host
        "https://:3383",
        "",
    ],
)
def test_bad_urls_are_rejected_with_a_message_naming_the_url_and_the_expected_form(url):
    with pytest.raises(ValueError) as caught:
        GrpcTarget.from_url(url)
    message = str(caught.value)
    assert repr(url) in message
    assert "http://host:port" in message and "https://host:port" in message


@pytest.mark.parametrize("url", ["http://node.example:notaport", "https://node.example:70000", "http://node.example:0"])
def test_a_bad_port_is_rejected_naming_the_url(url):
    with pytest.raises(ValueError, match="port") as info:
        GrpcTarget.from_url(url)
    assert repr(url) in str(info.value)


def test_str_is_a_url_that_parses_back():
    for url in ("http://127.0.0.1:3383", "https://[::1]:2283", "https://node.example:443"):
        target = GrpcTarget.from_url(url)
        assert str(target) == url and GrpcTarget.from_url(str(target)) == target


# -- the channel ----------------------------------------------------------------------------------


def open_channel(url: str):
    """_open_channel runs on the asyncio side (grpclib's Channel takes the running loop)."""

    async def build():
        return _open_channel(GrpcTarget.from_url(url))

    return asyncio.run(build())


def client_hello(context: ssl.SSLContext, server_hostname: str) -> bytes:
    """The TLS ClientHello ``context`` sends first, produced in memory (no socket)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()  # writes the ClientHello, then waits for the server's answer
    return outgoing.read()


def alpn_offered(hello: bytes) -> list[bytes]:
    """The protocols of the ALPN extension (type 16) of a TLS ClientHello record ([] if none)."""
    assert hello[0] == 0x16, "not a TLS handshake record"
    body = hello[5:]
    assert body[0] == 0x01, "not a ClientHello"
    pos = 4 + 2 + 32  # handshake header, client version, random
    pos += 1 + body[pos]  # session id
    pos += 2 + struct.unpack_from("!H", body, pos)[0]  # cipher suites
    pos += 1 + body[pos]  # compression methods
    end = pos + 2 + struct.unpack_from("!H", body, pos)[0]
    pos += 2
    while pos < end:
        ext_type, ext_len = struct.unpack_from("!HH", body, pos)
        pos += 4
        if ext_type == 16:
            protocols, at = [], pos + 2
            while at < pos + ext_len:
                size = body[at]
                protocols.append(bytes(body[at + 1 : at + 1 + size]))
                at += 1 + size
            return protocols
        pos += ext_len
    return []


def test_https_channel_uses_a_verifying_tls_context_offering_alpn_h2():
    channel = open_channel("https://snapchain.example:3383")
    try:
        assert (channel._host, channel._port) == ("snapchain.example", 3383)
        assert channel._scheme == "https"
        context = channel._ssl
        assert isinstance(context, ssl.SSLContext)
        # certificates are checked, against the host name: TLS without verification would be a MITM hole
        assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
        assert alpn_offered(client_hello(context, "snapchain.example")) == [b"h2"]
        assert isinstance(channel._codec, RawBytesCodec)  # payloads stay raw bytes, never decoded
    finally:
        channel.close()


def test_http_channel_is_plaintext():
    channel = open_channel("http://127.0.0.1:3383")
    try:
        assert (channel._host, channel._port) == ("127.0.0.1", 3383)
        assert channel._ssl is None
        assert channel._scheme == "http"
        assert isinstance(channel._codec, RawBytesCodec)
    finally:
        channel.close()


def test_the_alpn_reader_sees_a_context_without_alpn():
    """The helper itself: a context that offers no ALPN reads as [] (so the h2 check can fail)."""
    context = ssl.create_default_context()
    assert alpn_offered(client_hello(context, "snapchain.example")) == []
    context.set_alpn_protocols(["http/1.1", "h2"])
    assert alpn_offered(client_hello(context, "snapchain.example")) == [b"http/1.1", b"h2"]


# -- what the first connection needs is loaded before the pipelines start ------------------------

_LOADED_BY_PARTITIONS = r"""
import random, sys
import trio
from weir.config import load_config
from weir.networks.base import NetworkContext
from weir.networks.farcaster import FarcasterNetwork
from weir.supervision import Backoff, CircuitBreaker

wanted = ["grpclib.client", "h2.connection", "weir.actors.grpc_channel"]
# GetInfo is read without the typed models: betterproto2 and the pydantic it pulls in cost ~50-90 ms
# of CPU to import, at every start, for one small reply.
unwanted = ["betterproto2", "pydantic", "weir.protos.snapchain"]
config = load_config(environ={}, overrides={"farcaster.url": "http://127.0.0.1:9", "farcaster.shards": "1,2"})
network = FarcasterNetwork(config, NetworkContext(backoff=Backoff(initial=0.1, maximum=1), rng=random.Random(),
                                                  redis_breaker=CircuitBreaker("redis")))
before = [name for name in wanted if name in sys.modules]
partitions = trio.run(network.partitions)
print(partitions, before, [name for name in wanted if name not in sys.modules], [name for name in unwanted if name in sys.modules])
"""


def test_partitions_loads_the_grpc_stack_so_the_first_connection_does_not_stall_the_pipelines():
    # Measured: imported by the first connection, these took ~120 ms of CPU in one asyncio callback
    # while live events queued (docs/performance.md, session 9). A fresh process, so nothing the
    # test run imported before hides it.
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _LOADED_BY_PARTITIONS], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "['1', '2'] [] [] []"

