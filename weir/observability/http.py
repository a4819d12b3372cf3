"""A tiny HTTP/1.1 server on trio for GET /metrics, /healthz and /readyz.

h11 does the protocol (sans-IO, from python-hyper); trio does the sockets. The listening sockets
are opened once, before the supervision tree starts (:func:`open_observability`), and outlive the
server task: if the task crashes, the root supervisor restarts it on the same port.

Observability never takes ingestion down: a port already in use is logged as an error and the
service runs without the endpoint; a bad request or a broken connection ends that connection only.

Nor can a client exhaust it (docs/security.md): at most ``max_connections`` are open at once (one
more is answered 503 and closed at once, so descriptors stay bounded and accept never meets
EMFILE on the endpoint's account); a connection must begin a request within ``idle_timeout`` and
complete it within ``request_timeout``, so idle and slow (slowloris) clients are shed in seconds.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from weir.observability.health import readiness
from weir.observability.metrics import new_registry
from weir.supervision import ChildSpec, Restart

log = logging.getLogger("weir.observability")

#: Writing a response may take this long at most.
SEND_TIMEOUT = 10.0
MAX_REQUEST_HEAD = 16 * 1024
RECEIVE_SIZE = 16 * 1024
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_BUSY_BODY = b"busy: too many connections to the metrics endpoint\n"
#: The whole answer to a connection above the cap: small enough for one non-blocking write.
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class Observability:
    """The /metrics, /healthz and /readyz endpoint of one service.

    Lifecycle: :func:`open_observability` binds it; :meth:`attach` gives it the running service
    (whose statistics it reads); :meth:`child_spec` is run by the root supervisor.

    Attributes:
        host, port: where it listens (``port`` is the bound one, e.g. when configured as 0; None
            when it is not listening).
        registry: this service's Prometheus registry (None until attached).
        max_connections: connections open at once; one more is answered 503 and closed.
        idle_timeout: seconds a connection may wait before a request begins.
        request_timeout: seconds a request may take to arrive whole once begun.
        connections: connections open now.
        refused: connections answered 503 because ``max_connections`` were open.
    """

    def __init__(self, host: str, port: int, *, stale_after: float = 30.0, max_connections: int = 64,
                 idle_timeout: float = 5.0, request_timeout: float = 5.0) -> None:
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.stale_after = stale_after
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.connections = 0
        self.refused = 0
        self.registry: CollectorRegistry | None = None
        self.service: Any = None
        self._listeners: list[trio.SocketListener] = []

    @property
    def listening(self) -> bool:
        return bool(self._listeners)

    @property
    def url(self) -> str | None:
        """``http://host:port`` of the endpoint, or None when it is not listening."""
        if self.port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def bind(self) -> None:
        """Open the listening sockets.

        Raises:
            OSError: the address is in use, or the host cannot be bound.
        """
        self._listeners = await trio.open_tcp_listeners(self.requested_port, host=self.host)
        self.port = self._listeners[0].socket.getsockname()[1]

    async def aclose(self) -> None:
        for listener in self._listeners:
            await trio.aclose_forcefully(listener)
        self._listeners = []

    def attach(self, service: Any) -> None:
        """Serve ``service``'s metrics and readiness (its partitions, supervisors and breakers)."""
        self.service = service
        self.registry = new_registry(service, stale_after=self.stale_after)

    def child_spec(self) -> ChildSpec:
        """The server task, for the root supervisor (start it first: it is then stopped last)."""
        return ChildSpec(name="observability", target=self.run, restart=Restart.PERMANENT, shutdown_grace=1.0)

    async def run(self, stopping: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until ``stopping`` is set (the sockets stay open for a restart)."""
        async with trio.open_nursery() as nursery:
            for listener in self._listeners:
                nursery.start_soon(self._accept, listener, nursery)
            task_status.started()
            await stopping.wait()
            nursery.cancel_scope.cancel()

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        failures = 0  # accept failures in a row for want of descriptors or memory: logged once
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                if failures == 0:
                    log.error("metrics endpoint: accept failed (%s); retrying every 0.1 s", exc,
                              extra={"event": "metrics_accept_failed", "error": str(exc)})
                failures += 1
                await trio.sleep(0.1)
                continue
            if failures:
                log.warning("metrics endpoint: accepting again after %d failed attempts", failures,
                            extra={"event": "metrics_accept_recovered", "failures": failures})
                failures = 0
            if self.connections >= self.max_connections:
                self.refused += 1
                _refuse_at_once(stream)
                continue
            self.connections += 1
            nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        """Serve requests on one connection (keep-alive) until the client closes, idles or is too slow."""
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        try:
            while True:
                request = await _read_request(connection, stream, idle_timeout=self.idle_timeout,
                                              request_timeout=self.request_timeout)
                if request is None:  # closed by the client, idle too long, or too slow
                    return
                status, content_type, body = self.respond(request.method, request.target, _header(request, b"accept"))
                with trio.fail_after(SEND_TIMEOUT):
                    await _send_response(connection, stream, status, content_type, body, head=request.method == b"HEAD")
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    return
                connection.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            await _send_error(connection, stream, exc.error_status_hint, str(exc))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, ConnectionError):
            pass
        except Exception:
            log.exception("metrics endpoint: request failed")
            await _send_error(connection, stream, 500, "internal error")
        finally:
            self.connections -= 1
            await trio.aclose_forcefully(stream)

    def respond(self, method: bytes, target: bytes, accept: bytes = b"") -> tuple[int, str, bytes]:
        """``(status, content type, body)`` for one request (runs in trio: reads trio's clock)."""
        path = target.split(b"?", 1)[0]
        if path not in (b"/metrics", b"/healthz", b"/readyz"):
            return 404, "text/plain; charset=utf-8", b"not found: try /metrics, /healthz or /readyz\n"
        if method not in (b"GET", b"HEAD"):
            return 405, "text/plain; charset=utf-8", b"method not allowed\n"
        if path == b"/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n"
        if self.service is None or self.registry is None:
            return 503, "text/plain; charset=utf-8", b"starting\n"
        if path == b"/metrics":
            encoder, content_type = choose_encoder(accept.decode("latin-1"))
            return 200, content_type, encoder(self.registry)
        verdict = readiness(self.service, now=trio.current_time(), stale_after=self.stale_after)
        body = json.dumps(verdict.as_json(), indent=1).encode() + b"\n"
        return (200 if verdict.ready else 503), "application/json", body


@asynccontextmanager
async def open_observability(settings: Any) -> AsyncIterator[Observability | None]:
    """The bound endpoint for ``settings`` (a MetricsSettings) for the block; None if disabled or the
    port cannot be bound (logged as an error: ingestion goes on without it)."""
    if not settings.enabled:
        yield None
        return
    observability = Observability(
        settings.host, settings.port, stale_after=settings.stale_after, max_connections=settings.max_connections,
        idle_timeout=settings.idle_timeout, request_timeout=settings.request_timeout,
    )
    try:
        await observability.bind()
    except OSError as exc:
        log.error(
            "metrics endpoint: cannot listen on %s:%d (%s); running without /metrics, /healthz and /readyz",
            settings.host, settings.port, exc,
            extra={"event": "metrics_unavailable", "host": settings.host, "port": settings.port, "error": str(exc)},
        )
        yield None
        return
    log.info("metrics endpoint at %s (/metrics, /healthz, /readyz)", observability.url,
             extra={"event": "metrics_listening", "url": observability.url})
    try:
        yield observability
    finally:
        with trio.CancelScope(shield=True):
            await observability.aclose()


def _header(request: h11.Request, name: bytes) -> bytes:
    for key, value in request.headers:
        if key == name:
            return value
    return b""


async def _read_request(
    connection: h11.Connection, stream: trio.SocketStream, *, idle_timeout: float, request_timeout: float
) -> h11.Request | None:
    """The next request, read to its end (a body is discarded); None when the client has closed,
    sent nothing for ``idle_timeout`` s, or took more than ``request_timeout`` s from its first byte."""
    request: h11.Request | None = None
    began = bool(connection.trailing_data[0])  # a pipelined request already begun
    with trio.move_on_after(request_timeout if began else idle_timeout) as deadline:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(RECEIVE_SIZE)
                if data and not began:
                    began = True
                    deadline.deadline = trio.current_time() + request_timeout
                connection.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None
    return None


def _refuse_at_once(stream: trio.SocketStream) -> None:
    """Answer 503 and close, without waiting (the accept loop must not): one non-blocking write,
    which a fresh socket's empty send buffer takes whole; if not, the client just sees the close."""
    try:
        os.write(stream.socket.fileno(), BUSY_RESPONSE)
    except OSError:
        pass
    stream.socket.close()


async def _send_response(
    connection: h11.Connection, stream: trio.SocketStream, status: int, content_type: str, body: bytes, *, head: bool
) -> None:
    headers = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
        ("cache-control", "no-store"),
    ]
    data = connection.send(h11.Response(status_code=status, headers=headers))
    if not head:
        data += connection.send(h11.Data(data=body))
    data += connection.send(h11.EndOfMessage())
    await stream.send_all(data)


async def _send_error(connection: h11.Connection, stream: trio.SocketStream, status: int, detail: str) -> None:
    """Answer ``status`` if the response has not begun (best effort: the connection is closing)."""
    if connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    try:
        with trio.move_on_after(1.0):
            await _send_response(connection, stream, status, "text/plain; charset=utf-8", f"{detail}\n".encode(), head=False)
    except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
        pass
