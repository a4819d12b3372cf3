"""The WebSocket upgrade of the WebSocket sources (AT Protocol, Ethereum JSON-RPC), failing at once
when the server closes the connection before it answers.

trio-websocket's ``wrap_client_stream`` (0.12) waits for the server's answer only: when the TCP
stream ends first (a reset, a close), its reader task records an abnormal closure and stops, and
the wait goes on until the caller's timeout. A relay or a node that drops connections during the
upgrade (restarting, behind a load balancer shedding load, a reset on the way) thus stalled every
reconnection for ``connect_timeout`` (10 s by default; the chaos suite's relay-cut scenarios
measured it). :func:`upgrade_client` watches the stream under the upgrade and raises
``ConnectionClosed`` as soon as it ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio_websocket
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection

from weir.actors.ws_bounded import bounded_client
from weir.actors.ws_transport import WebSocketTarget, open_stream

__all__ = ["upgrade_client"]

ABNORMAL_CLOSURE = 1006


class _WatchedStream(trio.abc.Stream):
    """``stream``, with an event set once it has ended (end of data, or broken either way)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self.ended = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended.set()
            raise
        if not data:
            self.ended.set()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended.set()
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def upgrade_client(nursery: trio.Nursery, stream: trio.abc.Stream, host: str, resource: str, *,
                         oversized_over: int | None = None, oversized_keep: int = 0, **options: Any) -> WebSocketConnection:
    """``trio_websocket.wrap_client_stream(nursery, stream, host, resource, **options)``, except that
    a stream that ends before the server accepts raises at once.

    With ``oversized_over``, a message longer than that is read past and delivered as an
    :class:`~weir.actors.ws_bounded.OversizedMessage` (its first ``oversized_keep`` bytes and its
    size) instead of closing the connection with 1009 (:mod:`weir.actors.ws_bounded`).

    Raises:
        trio_websocket.ConnectionClosed: the connection ended during the upgrade (code 1006).
        trio_websocket.ConnectionRejected: the server answered with an HTTP status (from ``nursery``,
            as trio-websocket raises it).
    """
    watched = _WatchedStream(stream)
    ws: WebSocketConnection | None = None
    async with trio.open_nursery() as race:

        async def upgrade() -> None:
            nonlocal ws
            if oversized_over is None:
                ws = await trio_websocket.wrap_client_stream(nursery, watched, host, resource, **options)  # type: ignore[arg-type]
            else:
                connection = bounded_client(watched, host, resource, limit=oversized_over, keep=oversized_keep, **options)
                nursery.start_soon(connection._reader_task)  # as wrap_client_stream does
                await connection._open_handshake.wait()
                ws = connection
            race.cancel_scope.cancel()

        async def watch() -> None:
            await watched.ended.wait()
            race.cancel_scope.cancel()

        race.start_soon(upgrade)
        race.start_soon(watch)
    if ws is None:
        raise ConnectionClosed(CloseReason(ABNORMAL_CLOSURE, "the connection ended during the WebSocket upgrade"))
    return ws


@asynccontextmanager
async def open_client(url: str, *, connect_timeout: float,
                      **options: Any) -> AsyncIterator[tuple[trio.Nursery, WebSocketConnection]]:
    """A client WebSocket to ``url`` over a stream weir owns (:func:`~weir.actors.ws_transport.open_stream`):
    connected and upgraded (:func:`upgrade_client` with ``options``) within ``connect_timeout``;
    yields the connection's nursery (for a reader task of the caller's) and the connection. On
    exit the WebSocket is closed (at most 1 s), then the stream, always: trio-websocket 0.12 leaves
    the socket open when the server closes first or rejects the upgrade (a leaked descriptor).
    """
    target = WebSocketTarget.from_url(url)
    stream = await open_stream(target, connect_timeout=connect_timeout)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(connect_timeout):
                ws = await upgrade_client(nursery, stream, target.host_header, target.resource, **options)
            try:
                yield nursery, ws
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
