"""A client WebSocket that reads past a message over weir's limit instead of closing (issue 10).

trio-websocket closes the connection with 1009 MESSAGE_TOO_BIG when a message passes its
``max_message_size``; the server then sends the same message again on the next connection, and
the stream is stuck for good. Here a message over ``limit`` is read to its end without being kept:
only its first ``keep`` bytes (or characters) and its size, delivered in its place, in order, as an
:class:`OversizedMessage`. The source dead-letters it and the same connection goes on; memory
stays within ``limit`` + ``keep`` per message whatever the server sends.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio
import wsproto
from trio_websocket import WebSocketConnection
from wsproto import ConnectionType, WSConnection

__all__ = ["BoundedWebSocketConnection", "OversizedMessage"]


@attrs.frozen(slots=True)
class OversizedMessage:
    """A message read past, not delivered: ``size`` bytes (characters for text), of which ``head``
    are the first ``keep``."""

    size: int
    head: bytes | str


class BoundedWebSocketConnection(WebSocketConnection):
    """trio-websocket's connection, with messages over ``limit`` delivered as :class:`OversizedMessage`.

    Sizes are measured as trio-websocket measures them (``len()``: bytes, or characters of a text
    message; a text message's bytes are checked again by the decoder).
    """

    def __init__(self, *args: Any, limit: int, keep: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limit = limit
        self._keep = keep
        self._oversized: OversizedMessage | None = None  # the message being read past

    async def _handle_message_event(self, event: wsproto.events.BytesMessage | wsproto.events.TextMessage) -> None:
        # Overrides trio-websocket 0.12's handler (its message parts and size are reused as they are).
        if self._oversized is None and self._message_size + len(event.data) > self._limit:
            head = (b"" if isinstance(event, wsproto.events.BytesMessage) else "").join(self._message_parts)  # type: ignore[attr-defined]
            self._oversized = OversizedMessage(self._message_size, head[: self._keep])
            self._message_parts = []
        if self._oversized is None:
            await super()._handle_message_event(event)
            return
        oversized = self._oversized
        head = oversized.head
        if len(head) < self._keep:
            head = head + event.data[: self._keep - len(head)]
        self._oversized = oversized = OversizedMessage(oversized.size + len(event.data), head)
        self._message_size = 0
        if event.message_finished:
            self._oversized = None
            try:
                await self._send_channel.send(oversized)  # type: ignore[arg-type]
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # the receiver is gone (closed by us): as trio-websocket does


def bounded_client(stream: Any, host: str, resource: str, *, limit: int, keep: int, **options: Any) -> BoundedWebSocketConnection:
    """A client connection over ``stream`` (what trio-websocket's ``wrap_client_stream`` builds, before
    its reader task is started and its handshake awaited)."""
    return BoundedWebSocketConnection(stream, WSConnection(ConnectionType.CLIENT), host=host, path=resource,
                                      limit=limit, keep=keep, **options)
