"""JSON-RPC 2.0 over one WebSocket (trio-websocket): concurrent calls and batches matched by id,
``eth_subscription`` pushes into a bounded channel. Knows nothing of chains; the Ethereum actor
(:mod:`weir.actors.ethereum`) drives it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from weir.actors.ws_upgrade import open_client
from weir.codecs.jsonrpc import ErrorReply, JsonRpcClientProtocol, Notification, ProtocolError

HEAD_BUFFER = 1024  # pushes buffered while the reader is busy (catching up); more are dropped and counted
MESSAGE_TOO_BIG = 1009  # RFC 6455: the WebSocket library closed on a message over its limit


class ConnectionLost(Exception):
    """The WebSocket closed (or broke) while calls were outstanding."""


class ReplyTooLarge(ConnectionLost):
    """A reply exceeded the connection's ``max_reply`` bytes: the WebSocket closed with 1009
    (MESSAGE_TOO_BIG), failing every call in flight. Asking the same again would be refused again:
    the caller asks for less (a smaller range), or gives the item up (dead letter)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a reply above the {limit}-byte limit (max_reply_bytes): WebSocket closed with 1009")
        self.limit = limit


class RequestTimeout(Exception):
    """A call got no answer within ``request_timeout``."""


@attrs.define(eq=False)
class RpcConnection:
    """JSON-RPC calls over one WebSocket: concurrent calls and batches matched by id, pushes to ``heads``."""

    ws: WebSocketConnection
    timeout: float
    max_reply: int = 256 << 20
    protocol: JsonRpcClientProtocol = attrs.Factory(JsonRpcClientProtocol)
    _waiting: dict[int, list[Any]] = attrs.Factory(dict)  # id -> [trio.Event, result or exception]
    _broken: BaseException | None = None
    heads_send: trio.MemorySendChannel[Any] = attrs.field(init=False)
    heads: trio.MemoryReceiveChannel[Any] = attrs.field(init=False)
    dropped_heads: int = 0

    def __attrs_post_init__(self) -> None:
        self.heads_send, self.heads = trio.open_memory_channel[Any](HEAD_BUFFER)

    async def read_loop(self) -> None:
        try:
            while True:
                message = await self.ws.get_message()
                for event in self.protocol.receive(message):
                    if isinstance(event, Notification):
                        if event.method == "eth_subscription" and isinstance(event.params, dict):
                            try:
                                self.heads_send.send_nowait(event.params.get("result"))
                            except trio.WouldBlock:
                                self.dropped_heads += 1
                        continue
                    slot = self._waiting.pop(event.id, None)
                    if slot is not None:
                        slot[1] = event.error if isinstance(event, ErrorReply) else event.result
                        slot[0].set()
        except ConnectionClosed as exc:
            if exc.reason.code == MESSAGE_TOO_BIG:
                self._fail(ReplyTooLarge(self.max_reply))
            else:
                self._fail(ConnectionLost(f"WebSocket closed ({exc.reason})"))
        except ProtocolError as exc:
            self._fail(exc)
        finally:
            self.heads_send.close()

    def _fail(self, exc: BaseException) -> None:
        self._broken = exc
        for slot in self._waiting.values():
            slot[1] = exc
            slot[0].set()
        self._waiting.clear()

    async def call(self, method: str, params: Any = ()) -> Any:
        """One call; returns its result or raises JsonRpcError / ConnectionLost / RequestTimeout."""
        id_, text = self.protocol.request(method, params)
        return (await self._send_and_wait([id_], text, method))[0]

    async def batch(self, calls: list[tuple[str, Any]]) -> list[Any]:
        """Several calls in one message; results in call order (answers may arrive in any order)."""
        ids, text = self.protocol.batch(calls)
        return await self._send_and_wait(ids, text, f"batch of {len(calls)} {calls[0][0]}")

    async def _send_and_wait(self, ids: list[int], text: str, what: str) -> list[Any]:
        if self._broken is not None:
            raise ConnectionLost(f"connection already broken: {self._broken}")
        slots = [[trio.Event(), None] for _ in ids]
        self._waiting.update(zip(ids, slots))
        try:
            await self.ws.send_message(text)
            with trio.fail_after(self.timeout):
                for slot in slots:
                    await slot[0].wait()
        except trio.TooSlowError:
            raise RequestTimeout(f"{what}: no answer within {self.timeout:g}s") from None
        except ConnectionClosed as exc:
            raise ConnectionLost(f"WebSocket closed ({exc.reason})") from None
        finally:
            for id_ in ids:
                self._waiting.pop(id_, None)
            self.protocol.forget(ids)
        results = [slot[1] for slot in slots]
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results


@asynccontextmanager
async def open_rpc(url: str, *, connect_timeout: float, request_timeout: float,
                   max_reply_bytes: int = 256 << 20) -> AsyncIterator[RpcConnection]:
    """Connect, run the reader, yield the connection; closes it on exit.

    An error leaves as itself, not wrapped in the reader nursery's exception group. A reply above
    ``max_reply_bytes`` closes the connection and fails the calls in flight with :class:`ReplyTooLarge`.
    """
    try:
        async with _rpc_nursery(url, connect_timeout, request_timeout, max_reply_bytes) as rpc:
            yield rpc
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from group
        raise


@asynccontextmanager
async def _rpc_nursery(url: str, connect_timeout: float, request_timeout: float,
                       max_reply_bytes: int) -> AsyncIterator[RpcConnection]:
    async with open_client(url, connect_timeout=connect_timeout, max_message_size=max_reply_bytes) as (nursery, ws):
        rpc = RpcConnection(ws=ws, timeout=request_timeout, max_reply=max_reply_bytes)
        nursery.start_soon(rpc.read_loop)
        yield rpc
