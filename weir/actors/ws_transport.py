"""The transport under the WebSocket sources (Ethereum JSON-RPC, AT Protocol): a TCP or TLS stream
for a ws:// or wss:// URL, opened here so that the sources own (and always close) it.

The TLS handshake is done here, up front. trio-websocket would do it inside its reader task, which
takes a failure for a closed connection and leaves the upgrade waiting until the connect timeout:
a refused certificate looked like ``TooSlowError``. Now ssl's own error leaves
(``SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] …``), as with https:// and rediss://.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import attrs
import trio


@attrs.frozen(kw_only=True)
class WebSocketTarget:
    """Where a ws:// or wss:// URL points.

    Attributes:
        host, port: the server (port 443 for wss, 80 for ws unless the URL names one).
        tls: wss.
        resource: the path and query the upgrade request asks for.
        host_header: the Host header: the host, with the port when the URL names one.
    """

    host: str
    port: int
    tls: bool
    resource: str
    host_header: str

    @classmethod
    def from_url(cls, url: str) -> WebSocketTarget:
        parts = urlsplit(url)
        tls = parts.scheme == "wss"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        return cls(host=host, port=port, tls=tls, resource=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                   host_header=host if parts.port is None else f"{host}:{port}")


async def open_stream(target: WebSocketTarget, *, connect_timeout: float) -> trio.abc.Stream:
    """A TCP stream to ``target``, wrapped in TLS (certificate and host name verified, handshake
    done) for wss; each step within ``connect_timeout`` seconds. Closed again if a step fails.

    Raises:
        OSError: the connection failed; ssl.SSLError: the handshake failed (a certificate refused).
        trio.TooSlowError: a step took longer than ``connect_timeout``.
    """
    with trio.fail_after(connect_timeout):
        stream = await trio.open_tcp_stream(target.host, target.port)
    if not target.tls:
        return stream
    tls_stream = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=target.host, https_compatible=True)
    try:
        with trio.fail_after(connect_timeout):
            await tls_stream.do_handshake()
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(tls_stream)
        if isinstance(exc.__cause__, ssl.SSLError):
            raise exc.__cause__ from None
        raise
    except BaseException:
        await trio.aclose_forcefully(tls_stream)
        raise
    return tls_stream
