"""The WebSocket upgrade fails at once when the server ends the connection before answering
(trio-websocket alone waits until the caller's timeout), and still upgrades, passes messages and
reports rejections as before. Real TCP sockets on localhost."""

from __future__ import annotations

import functools
import socket
import struct

import pytest
import trio
import trio_websocket

from weir.actors.ws_upgrade import upgrade_client

GENEROUS = 5.0  # far below it: the unpatched upgrade waits for ever here


async def _serve(handler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(handler, listeners, handler_nursery=nursery)


async def _read_head(stream: trio.SocketStream) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        data = await stream.receive_some(4096)
        if not data:
            break
        head += data
    return head


async def close_after_request(stream: trio.SocketStream) -> None:
    await _read_head(stream)
    await stream.aclose()


async def reset_after_request(stream: trio.SocketStream) -> None:
    await _read_head(stream)
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


async def _upgrade(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream, trio.open_nursery() as nursery:
        await upgrade_client(nursery, stream, f"127.0.0.1:{port}", "/")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("handler", [close_after_request, reset_after_request], ids=["close", "reset"])
async def test_a_connection_ended_during_the_upgrade_raises_at_once(handler):
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_serve, handler)
        started = trio.current_time()
        with trio.fail_after(GENEROUS), pytest.RaisesGroup(trio_websocket.ConnectionClosed) as caught:
            await _upgrade(port)
        assert trio.current_time() - started < 1.0
        assert caught.value.exceptions[0].reason.code == 1006
        nursery.cancel_scope.cancel()


async def test_an_accepted_upgrade_carries_messages_and_a_rejection_is_still_reported():
    async def echo(request: trio_websocket.WebSocketRequest) -> None:
        if request.path == "/busy":
            await request.reject(429, extra_headers=[(b"Retry-After", b"3")], body=b"later")
            return
        ws = await request.accept()
        await ws.send_message(await ws.get_message())

    async with trio.open_nursery() as nursery:
        server = await nursery.start(functools.partial(trio_websocket.serve_websocket, echo, "127.0.0.1", 0, ssl_context=None))
        port = server.port
        with trio.fail_after(GENEROUS):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream, trio.open_nursery() as inner:
                ws = await upgrade_client(inner, stream, f"127.0.0.1:{port}", "/echo", max_message_size=1 << 20)
                await ws.send_message("hello")
                assert await ws.get_message() == "hello"
                await ws.aclose()
            with pytest.RaisesGroup(trio_websocket.ConnectionRejected) as rejected:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream, trio.open_nursery() as inner:
                    await upgrade_client(inner, stream, f"127.0.0.1:{port}", "/busy")
            assert rejected.value.exceptions[0].status_code == 429
        nursery.cancel_scope.cancel()
