"""A publish-only NATS connection on trio sockets: windows of JetStream publishes and their acknowledgements.

Why not nats-py's publish: it costs ~23 µs of CPU per message (a subject check, a header dict
re-encoded, a Msg object and an asyncio callback per acknowledgement, through weir/bridge.py),
nats-py's ``publish_async`` ~106; this costs ~6 (benchmarks/bench_nats_publish.py,
docs/performance.md, "Delivery"). nats-py still
creates and checks the stream (weir/deliver/jetstream.py): that is done once.

A window is written with one ``send_all``; each message asks for its reply on
``<inbox>.<n>``, and one wildcard subscription receives every acknowledgement, matched to its
message by ``n`` (weir/deliver/nats_wire.py parses them). A lost connection fails the window's
unacknowledged messages (the caller sends them again) and the next window connects again.
"""

from __future__ import annotations

import logging
import secrets
import ssl
from collections.abc import Sequence

import attrs
import trio

from weir.deliver.nats_messages import Message
from weir.deliver.nats_wire import (
    ProtocolError,
    ServerAddress,
    ack_problem,
    connect_command,
    message_size,
    publish_window,
    read_ops,
    reply_token,
    subscribe_command,
)
from weir.redact import redact_text, redact_url

log = logging.getLogger("weir.deliver.nats")

# How long one attempt to connect may take (TCP, INFO, TLS, CONNECT and its PONG).
CONNECT_WITHIN = 5.0
# A connection unused for longer is replaced before the next window: the server PINGs every 2
# minutes and drops a client that did not answer two (nothing reads the socket between windows).
IDLE_REFRESH = 60.0
RECEIVE_SIZE = 256 * 1024
_REPLY_SID = 1


class NatsUnavailable(Exception):
    """NATS could not be reached, or did not acknowledge in time (time cures it)."""


class _ConnectionLost(Exception):
    """The connection broke or the server ended it (-ERR); the text says why, redacted."""


@attrs.define(eq=False)
class Window:
    """Messages written to a connection, with their acknowledgements as they come."""

    messages: list[Message]
    answers: list[bool | None]  # one per message; None: waiting; True: acknowledged; False: refused
    connection: _Connection | None = None  # None: not written (no connection, or it broke)
    first: int = 0  # the reply token of messages[0]
    refused: list[Message] = attrs.field(factory=list)  # never written: larger than the server takes
    reason: str = ""


@attrs.define(eq=False)
class _Connection:
    stream: trio.abc.Stream
    reply_prefix: str
    max_payload: int
    last_used: float
    buffer: bytearray = attrs.field(factory=bytearray)
    next_token: int = 0


class NatsPublisher:
    """One connection's publishes, a window at a time (one task at a time).

    Args:
        url: nats://[user:password@|token@]host[:port] or tls://…; never shown unredacted.
        name: the connection's name, as the server lists it.
        ack_timeout: seconds a window's acknowledgements are awaited.
        ssl_context: whom to trust with TLS (default: the system's CAs).
    """

    def __init__(self, url: str, *, name: str, ack_timeout: float, clock=trio.current_time,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._address = ServerAddress.of(url)
        self._shown = redact_url(url)
        self._name = name
        self._ack_timeout = ack_timeout
        self._clock = clock
        self._ssl_context = ssl_context  # None: the system's CAs
        self._connection: _Connection | None = None
        self._lost = False  # a live connection broke: say so when one is made again
        self._last_error = ""
        self.max_payload: int | None = None  # the largest message the server takes (its last INFO); None: not yet connected

    async def connect(self) -> None:
        """Connect now, if NATS can be reached (so ``max_payload`` is known before the first offer)."""
        try:
            await self._connected()
        except NatsUnavailable:
            pass  # said once by _connected; the first window connects again

    async def send(self, messages: Sequence[Message]) -> Window:
        """Write ``messages`` (connecting first if need be) without waiting for anything: a
        connection that cannot be made or breaks leaves the window failed, for ``settle`` to say."""
        window = Window(messages=list(messages), answers=[None] * len(messages))
        try:
            connection = await self._connected()
        except NatsUnavailable as exc:
            window.reason = str(exc)
            return window
        # Normally refused earlier (NatsTarget.offer): here only when the server's limit shrank since.
        window.refused = [m for m in window.messages if message_size(m) > connection.max_payload]
        if window.refused:
            window.messages = [m for m in window.messages if message_size(m) <= connection.max_payload]
            window.reason = f"a message larger than the server's max_payload ({connection.max_payload} bytes)"
            window.answers = [None] * len(window.messages)
        window.first = connection.next_token
        connection.next_token += len(window.messages)
        try:
            with trio.move_on_after(self._ack_timeout) as writing:  # a server that stopped reading
                await _send(connection, publish_window(window.messages, connection.reply_prefix, window.first))
            if writing.cancelled_caught:
                raise _ConnectionLost(f"the server took no bytes for {self._ack_timeout:g}s")
        except _ConnectionLost as exc:
            window.reason = redact_text(str(exc))
            self._drop(window.reason)
            return window
        except BaseException:  # cancelled half-way: the stream's state is unknown
            self._drop("")
            raise
        window.connection = connection
        return window

    async def settle(self, window: Window) -> tuple[list[Message], str]:
        """Await the acknowledgements of a window ``send`` wrote (at most ``ack_timeout``): the
        messages not acknowledged (stored or duplicate), and why (redacted; "" when all were)."""
        connection = window.connection
        if connection is not None and connection is self._connection:  # else its replies cannot come
            try:
                await self._await_acks(connection, window)
            except _ConnectionLost as exc:
                window.reason = window.reason or redact_text(str(exc))
                self._drop(redact_text(str(exc)))
            except BaseException:
                self._drop("")
                raise
            connection.last_used = self._clock()
        failed = window.refused + [m for m, answer in zip(window.messages, window.answers) if answer is not True]
        if failed and not window.reason:
            window.reason = f"no acknowledgement within {self._ack_timeout:g}s"
        return failed, window.reason

    async def _await_acks(self, connection: _Connection, window: Window) -> None:
        prefix = connection.reply_prefix.encode()
        answers, first = window.answers, window.first
        waiting = answers.count(None)
        with trio.move_on_after(self._ack_timeout):
            while waiting:
                for op in await _receive(connection):
                    if op[0] != "MSG":
                        await _answer(connection, op)
                        continue
                    token = reply_token(op[1], prefix)
                    if token is None or not 0 <= token - first < len(answers) or answers[token - first] is not None:
                        continue  # a late reply to an earlier window
                    problem = ack_problem(op[2], op[3])
                    answers[token - first] = problem is None
                    if problem is not None and not window.reason:
                        window.reason = redact_text(problem)
                    waiting -= 1

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None and self._clock() - connection.last_used <= IDLE_REFRESH:
            return connection
        if connection is not None:  # idle: the server may have dropped it meanwhile
            self._drop("")
        try:
            self._connection = await self._open()
        except NatsUnavailable as exc:
            text = str(exc)
            if text != self._last_error:  # a server down fails every attempt the same way
                log.warning("%s", text, extra={"event": "deliver_nats_error", "url": self._shown})
            self._last_error = text
            raise
        self._last_error = ""
        if self._lost:
            self._lost = False
            log.info("nats %s: reconnected", self._shown, extra={"event": "deliver_nats_reconnected", "url": self._shown})
        return self._connection

    async def _open(self) -> _Connection:
        address = self._address
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(CONNECT_WITHIN):
                stream = await trio.open_tcp_stream(address.host, address.port)
                connection = _Connection(stream=stream, reply_prefix=f"_INBOX.{secrets.token_hex(11)}",
                                         max_payload=1024 * 1024, last_used=self._clock())
                info = await _server_info(connection)
                tls = address.tls or bool(info.get("tls_required"))
                if tls:  # the server's INFO is in clear, then the client starts TLS
                    context = self._ssl_context or ssl.create_default_context()
                    stream = connection.stream = trio.SSLStream(stream, context, server_hostname=address.host)
                    await stream.do_handshake()
                connection.max_payload = int(info.get("max_payload", connection.max_payload))
                self.max_payload = connection.max_payload
                await _send(connection, connect_command(address, name=self._name, tls=tls)
                            + subscribe_command(connection.reply_prefix + ".*", _REPLY_SID) + b"PING\r\n")
                while not any(op[0] == "PONG" for op in await _receive(connection, answer=True)):
                    pass
                return connection
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, _ConnectionLost) as exc:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            if isinstance(exc, trio.TooSlowError):
                text = f"no answer within {CONNECT_WITHIN:g}s"
            else:  # a failed TLS handshake: BrokenResourceError from the SSLError
                text = str(exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc)
            raise NatsUnavailable(f"cannot connect to NATS at {self._shown}: {redact_text(text) or type(exc).__name__}") from None
        except BaseException:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise

    def _drop(self, reason: str) -> None:
        """Forget the connection (closed without waiting); ``reason``: it broke, say so once."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if reason:
            self._lost = True
            log.warning("nats %s: disconnected (%s)", self._shown, reason,
                        extra={"event": "deliver_nats_disconnected", "url": self._shown})
        _close_now(connection.stream)

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await trio.aclose_forcefully(connection.stream)


async def _server_info(connection: _Connection) -> dict:
    ops: list = []
    while not ops:
        ops = await _receive(connection)
    if ops[0][0] != "INFO":
        raise _ConnectionLost(f"the server did not start with INFO but {ops[0][0]}")
    return ops[0][1]


async def _send(connection: _Connection, data: bytes) -> None:
    try:
        await connection.stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise _ConnectionLost(f"connection lost: {exc.__cause__ or exc or type(exc).__name__}") from None


async def _receive(connection: _Connection, *, answer: bool = False) -> list:
    """The operations of the next bytes received (answering PINGs and raising on -ERR when
    ``answer``; otherwise the caller hands each op that is not a MSG to ``_answer``)."""
    try:
        data = await connection.stream.receive_some(RECEIVE_SIZE)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise _ConnectionLost(f"connection lost: {exc.__cause__ or exc or type(exc).__name__}") from None
    if not data:
        raise _ConnectionLost("connection closed by the server")
    connection.buffer += data
    try:
        ops, used = read_ops(connection.buffer)
    except ProtocolError as exc:
        raise _ConnectionLost(str(exc)) from None
    del connection.buffer[:used]
    if answer:
        for op in ops:
            await _answer(connection, op)
    return ops


async def _answer(connection: _Connection, op: tuple) -> None:
    """What a server operation other than a reply asks: PONG to a PING; -ERR ends the connection
    (the server closes it after most errors; weir does after every one)."""
    if op[0] == "PING":
        # Not cut by the caller's timeout (half a PONG would garble the next command); bounded itself.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CONNECT_WITHIN) as writing:
            await _send(connection, b"PONG\r\n")
        if writing.cancelled_caught:
            raise _ConnectionLost(f"the server took no bytes for {CONNECT_WITHIN:g}s")
    elif op[0] == "-ERR":
        raise _ConnectionLost(f"the server said: {op[1]}")


def _close_now(stream: trio.abc.Stream) -> None:
    """Close the socket under ``stream`` (without TLS's goodbye: a drop has nothing to wait for)."""
    transport = getattr(stream, "transport_stream", stream)
    if isinstance(transport, trio.SocketStream):
        transport.socket.close()
