"""A real HTTP/1.1 webhook receiver: h11 over trio sockets on 127.0.0.1, for the webhook chaos
target (:mod:`weir.chaos.webhook_endpoint`) and the tests.

It records every request it read completely (the idempotency key, the signature header, the body,
when) and answers what ``respond`` says: a status (with a body), ``HANG`` (read the request and
never answer) or ``CLOSE`` (close the connection without a response).
"""

from __future__ import annotations

import collections
import functools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import h11
import trio

HANG = "hang"
CLOSE = "close"


@attrs.frozen
class Request:
    key: str
    timestamp: str
    signature: str
    body: bytes
    at: float  # trio.current_time() when the request was read

    @property
    def stream_id(self) -> str:
        return json.loads(self.body)["stream_id"]

    @property
    def batched(self) -> bool:
        """Whether the body is a batch, ``{"events": [...]}`` (events_per_request > 1)."""
        return list(json.loads(self.body)) == ["events"]

    @property
    def events(self) -> list[dict]:
        """The events the request carries: its body, or each item of a batch's ``events``."""
        body = json.loads(self.body)
        return body["events"] if list(body) == ["events"] else [body]


Answer = int | tuple[int, bytes] | str


@attrs.define(eq=False)
class Receiver:
    """``respond(request, earlier)`` decides each answer; ``earlier`` counts the requests with the
    same idempotency key before this one."""

    respond: Callable[[Request, int], Answer] = lambda request, earlier: 200
    requests: list[Request] = attrs.field(factory=list)
    url: str = ""
    _seen: collections.Counter[str] = attrs.field(factory=collections.Counter)  # requests per idempotency key
    changed: trio.Event = attrs.field(factory=trio.Event)

    async def _serve(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read_request(stream, connection)
                if request is None:
                    return
                earlier = self._seen[request.key]
                self._seen[request.key] += 1
                self.requests.append(request)
                self.changed.set()
                self.changed = trio.Event()
                answer = self.respond(request, earlier)
                if answer == HANG:
                    await trio.sleep_forever()
                if answer == CLOSE:
                    return
                status, body = answer if isinstance(answer, tuple) else (answer, b"")
                await stream.send_all(connection.send(h11.Response(status_code=status, headers=[
                    ("Content-Length", str(len(body))), ("Content-Type", "text/plain")])))
                await stream.send_all(connection.send(h11.Data(data=body)) + connection.send(h11.EndOfMessage()))
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    return
                connection.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return  # the client went away
        finally:
            await stream.aclose()

    async def _read_request(self, stream: trio.SocketStream, connection: h11.Connection) -> Request | None:
        headers: dict[bytes, bytes] = {}
        body = bytearray()  # a batched request's body comes in many pieces
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return None
                connection.receive_data(data)
            elif isinstance(event, h11.Request):
                headers = {name.lower(): value for name, value in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Request(key=headers.get(b"weir-idempotency-key", b"").decode(),
                                timestamp=headers.get(b"weir-timestamp", b"").decode(),
                                signature=headers.get(b"weir-signature", b"").decode(), body=bytes(body),
                               at=trio.current_time())
            elif isinstance(event, h11.ConnectionClosed):
                return None


@asynccontextmanager
async def running_receiver(respond: Callable[[Request, int], Answer] | None = None) -> AsyncIterator[Receiver]:
    """A receiver listening on 127.0.0.1 (``receiver.url``) until the block ends."""
    receiver = Receiver() if respond is None else Receiver(respond=respond)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, receiver._serve, 0, host="127.0.0.1"))
        receiver.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/hook"
        yield receiver
        nursery.cancel_scope.cancel()
