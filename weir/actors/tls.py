"""TLS for the WebSocket sources: the handshake done up front, so a refused certificate is named."""

from __future__ import annotations

import ssl

import trio


async def tls_handshake(stream: trio.abc.Stream) -> None:
    """Do ``stream``'s TLS handshake now (nothing for a plain stream).

    trio-websocket would do it inside its reader task, which takes a failure for a closed
    connection and leaves the upgrade waiting until the connect timeout: the node's certificate
    refused looked like ``TooSlowError``. Here ssl's own error leaves instead
    (``SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] …``), as with https:// and rediss://.

    Raises:
        ssl.SSLError: the handshake failed (a certificate refused, no common protocol).
        trio.BrokenResourceError: the connection broke during the handshake.
    """
    if not isinstance(stream, trio.SSLStream):
        return
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        if isinstance(exc.__cause__, ssl.SSLError):
            raise exc.__cause__ from None
        raise
