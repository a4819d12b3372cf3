"""A fault-injecting TCP proxy on trio, placed between weir and a peer (the simulator, Redis).

Faults use toxiproxy's vocabulary (shared/notes/reliability.md) and are switched at runtime::

    async with open_proxy("127.0.0.1", redis.port) as proxy:
        handle = proxy.add(Latency(ms=200, jitter_ms=20), direction=Direction.DOWNSTREAM)
        ...
        proxy.remove(handle)

Layout: the fault pipeline is sans-IO — :class:`LinkShaper` turns a received chunk and the current
time into timed segments to deliver (and maybe a close), and reports whether the link is stalled
and when a connection-level action is due. The I/O around it is a thin loop per direction: a
reader feeds the shaper, a writer sleeps until each segment is due and sends it.

``upstream`` is client → server (weir → peer), ``downstream`` server → client, as in toxiproxy.

One deliberate difference from toxiproxy: :class:`Timeout` *holds* the data (stops reading and
forwarding; TCP flow control then stalls the sender) instead of discarding it. A real network
never drops bytes from the middle of a TCP stream: it delays them or the connection dies. So
when a timeout without ``close_after_ms`` is removed, the held bytes flow again, late — which is
how a request that timed out at the client can still execute at the server.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import itertools
import logging
import random
import socket
import struct
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import attrs
import trio

__all__ = [
    "Bandwidth",
    "CloseKind",
    "Direction",
    "Down",
    "Fault",
    "FaultHandle",
    "FaultProxy",
    "Latency",
    "LimitData",
    "LinkShaper",
    "ProxyStatistics",
    "ResetPeer",
    "Segment",
    "Shaped",
    "Slicer",
    "Timeout",
    "open_proxy",
]

log = logging.getLogger("weir.chaos.proxy")

RECEIVE_SIZE = 65536
_QUEUE_CHUNKS = 16  # chunks read but not yet delivered, per direction (bounds the proxy's memory)


class Direction(enum.Enum):
    """Which way a fault applies: ``upstream`` = client → server, ``downstream`` = server → client."""

    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"
    BOTH = "both"

    def covers(self, link: Direction) -> bool:
        return self is Direction.BOTH or self is link


class CloseKind(enum.Enum):
    """How the proxy ends a connection: ``fin`` (orderly close) or ``rst`` (SO_LINGER 0: reset)."""

    FIN = "fin"
    RST = "rst"


def _non_negative(_: object, attribute: attrs.Attribute, value: float | None) -> None:  # type: ignore[type-arg]
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _positive(_: object, attribute: attrs.Attribute, value: float) -> None:  # type: ignore[type-arg]
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


# -- faults (values) ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Latency:
    """Delay every chunk by ``ms`` ± ``jitter_ms`` (uniform); order is kept, as TCP keeps it."""

    ms: float = attrs.field(validator=_non_negative)
    jitter_ms: float = attrs.field(default=0.0, validator=_non_negative)
    kind = "latency"


@attrs.frozen(kw_only=True)
class Bandwidth:
    """Cap the throughput at ``kb_per_s`` kilobytes (1000 bytes) per second."""

    kb_per_s: float = attrs.field(validator=_positive)
    kind = "bandwidth"


@attrs.frozen(kw_only=True)
class Timeout:
    """Stop all data (held, not dropped); close the connection after ``close_after_ms`` (None/0: hang)."""

    close_after_ms: float | None = attrs.field(default=None, validator=_non_negative)
    kind = "timeout"


@attrs.frozen(kw_only=True)
class ResetPeer:
    """Reset (TCP RST) every connection ``after_ms`` after the fault (or the connection) starts."""

    after_ms: float = attrs.field(default=0.0, validator=_non_negative)
    kind = "reset_peer"


@attrs.frozen(kw_only=True)
class Slicer:
    """Split data into pieces of ``average_size`` ± ``size_variation`` bytes, ``delay_us`` apart."""

    average_size: int = attrs.field(default=16, validator=_positive)
    size_variation: int = attrs.field(default=0, validator=_non_negative)
    delay_us: float = attrs.field(default=1000.0, validator=_non_negative)
    kind = "slicer"

    def __attrs_post_init__(self) -> None:
        if self.size_variation >= self.average_size:
            raise ValueError("size_variation must be smaller than average_size")


@attrs.frozen(kw_only=True)
class LimitData:
    """Close the connection once ``bytes`` bytes have passed (counted from when the fault applies)."""

    bytes: int = attrs.field(validator=_non_negative)
    kind = "limit_data"


@attrs.frozen(kw_only=True)
class Down:
    """The proxy is down: new connections are refused, existing ones are cut (direction ignored)."""

    kind = "down"


Fault = Latency | Bandwidth | Timeout | ResetPeer | Slicer | LimitData | Down

FAULT_KINDS: dict[str, type[Any]] = {
    cls.kind: cls for cls in (Latency, Bandwidth, Timeout, ResetPeer, Slicer, LimitData, Down)  # type: ignore[attr-defined]
}


@attrs.frozen
class FaultHandle:
    """What :meth:`FaultProxy.add` returns; pass it to :meth:`FaultProxy.remove`."""

    id: int
    fault: Fault
    direction: Direction


# -- the sans-IO pipeline -----------------------------------------------------------------------


@attrs.frozen
class Segment:
    """Bytes to deliver at time ``at`` (trio clock, seconds)."""

    at: float
    data: bytes


@attrs.frozen
class Shaped:
    """What to do with one received chunk: deliver ``segments`` in order, then maybe close."""

    segments: tuple[Segment, ...]
    close: CloseKind | None = None


@attrs.define
class _Active:
    fault: Fault
    since: float  # when it started to apply to this link
    # per-fault state: Latency -> last delivery time; Bandwidth -> when the line is free;
    # LimitData -> bytes passed
    state: float = 0.0


@attrs.define(eq=False)
class LinkShaper:
    """One direction of one connection: the faults that apply to it, as pure data transformations.

    No sockets and no clock of its own: ``now`` is passed in, so it is tested with plain numbers.
    """

    rng: random.Random = attrs.Factory(random.Random)
    _faults: dict[int, _Active] = attrs.Factory(dict)

    def set_faults(self, faults: Sequence[FaultHandle], now: float) -> None:
        """Apply exactly ``faults`` (in order); keep the state of those already applied."""
        current = self._faults
        self._faults = {h.id: current.get(h.id) or _Active(h.fault, now) for h in faults}

    @property
    def faults(self) -> tuple[Fault, ...]:
        return tuple(a.fault for a in self._faults.values())

    @property
    def stalled(self) -> bool:
        """True while a :class:`Timeout` holds the data."""
        return any(isinstance(a.fault, Timeout) for a in self._faults.values())

    def deadline(self) -> tuple[float, CloseKind] | None:
        """The earliest connection-level action due (time, how to close), if any."""
        due: list[tuple[float, CloseKind]] = []
        for a in self._faults.values():
            if isinstance(a.fault, Timeout) and a.fault.close_after_ms:
                due.append((a.since + a.fault.close_after_ms / 1000, CloseKind.FIN))
            elif isinstance(a.fault, ResetPeer):
                due.append((a.since + a.fault.after_ms / 1000, CloseKind.RST))
        return min(due, key=lambda d: d[0]) if due else None

    def push(self, data: bytes, now: float) -> Shaped:
        """Shape one received chunk through every fault, in the order they were added."""
        segments = [Segment(now, data)]
        for active in self._faults.values():
            fault = active.fault
            if isinstance(fault, Latency):
                segments = _delay(segments, active, fault, self.rng)
            elif isinstance(fault, Bandwidth):
                segments = _throttle(segments, active, fault.kb_per_s * 1000)
            elif isinstance(fault, Slicer):
                segments = _slice(segments, fault, self.rng)
            elif isinstance(fault, LimitData):
                segments, full = _limit(segments, active, fault.bytes)
                if full:
                    return Shaped(tuple(segments), CloseKind.FIN)
        return Shaped(tuple(segments))


def _delay(segments: list[Segment], active: _Active, fault: Latency, rng: random.Random) -> list[Segment]:
    out = []
    for seg in segments:
        jitter = rng.uniform(-fault.jitter_ms, fault.jitter_ms) if fault.jitter_ms else 0.0
        at = max(seg.at + max(0.0, fault.ms + jitter) / 1000, active.state)  # never reorder
        active.state = at
        out.append(Segment(at, seg.data))
    return out


def _throttle(segments: list[Segment], active: _Active, bytes_per_s: float) -> list[Segment]:
    # Pieces of ~20 ms of the line's capacity, so a big chunk trickles out instead of arriving late
    # in one burst.
    piece = max(1, int(bytes_per_s * 0.02))
    out = []
    for seg in segments:
        for i in range(0, len(seg.data), piece):
            data = seg.data[i : i + piece]
            start = max(seg.at, active.state)
            active.state = start + len(data) / bytes_per_s
            out.append(Segment(active.state, data))
    return out


def _slice(segments: list[Segment], fault: Slicer, rng: random.Random) -> list[Segment]:
    out = []
    delay = fault.delay_us / 1e6
    at = segments[0].at if segments else 0.0
    for seg in segments:
        at = max(at, seg.at)
        i = 0
        while i < len(seg.data):
            size = fault.average_size + rng.randint(-fault.size_variation, fault.size_variation)
            out.append(Segment(at, seg.data[i : i + size]))
            i += size
            at += delay
    return out


def _limit(segments: list[Segment], active: _Active, limit: int) -> tuple[list[Segment], bool]:
    out = []
    for seg in segments:
        room = limit - int(active.state)
        if len(seg.data) >= room:
            if room > 0:
                out.append(Segment(seg.at, seg.data[:room]))
            active.state = limit
            return out, True
        active.state += len(seg.data)
        out.append(seg)
    return out, False


# -- I/O ----------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ProxyStatistics:
    """A snapshot of the proxy.

    Attributes:
        connections: connections accepted since the proxy started.
        open_connections: connections open now.
        refused: connections accepted but failed because the upstream could not be reached.
        bytes_upstream: bytes delivered client → server.
        bytes_downstream: bytes delivered server → client.
        cut: connections the proxy ended on purpose (timeout, reset, limit, down).
        faults: the faults applied now.
        down: whether the proxy refuses connections now.
    """

    connections: int
    open_connections: int
    refused: int
    bytes_upstream: int
    bytes_downstream: int
    cut: int
    faults: tuple[FaultHandle, ...]
    down: bool


@attrs.define(eq=False)
class _Connection:
    client: trio.SocketStream
    upstream: trio.SocketStream
    opened: float
    links: dict[Direction, LinkShaper]
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    closing: CloseKind | None = None
    done: set[Direction] = attrs.Factory(set)  # directions that ended by themselves (EOF passed on)

    def cut(self, kind: CloseKind) -> None:
        if self.closing is None:
            self.closing = kind
            self.scope.cancel()


def _set_rst_on_close(stream: trio.SocketStream) -> None:
    try:
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already closed by the peer


@attrs.define(eq=False)
class FaultProxy:
    """A running proxy; create it with :func:`open_proxy`.

    Attributes:
        upstream_host, upstream_port: the peer behind the proxy.
        host, port: where the proxy listens.
    """

    upstream_host: str
    upstream_port: int
    host: str
    port: int
    _rng: random.Random
    _faults: dict[int, FaultHandle] = attrs.Factory(dict)
    _ids: Iterator[int] = attrs.Factory(lambda: itertools.count(1))
    _connections: set[_Connection] = attrs.Factory(set)
    _changed: trio.Event = attrs.Factory(trio.Event)
    _connections_total: int = 0
    _refused: int = 0
    _cut: int = 0
    _bytes: dict[Direction, int] = attrs.Factory(lambda: {Direction.UPSTREAM: 0, Direction.DOWNSTREAM: 0})

    # -- addresses ------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def url(self, scheme: str, path: str = "") -> str:
        """``scheme://host:port`` + ``path``, e.g. ``proxy.url("redis", "/0")``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def http_url(self) -> str:
        """For a plaintext gRPC peer (the simulator): ``http://host:port``."""
        return self.url("http")

    @property
    def redis_url(self) -> str:
        """For a Redis peer: ``redis://host:port/0``."""
        return self.url("redis", "/0")

    # -- faults ---------------------------------------------------------------------------------

    def add(self, fault: Fault, direction: Direction | str = Direction.BOTH) -> FaultHandle:
        """Start applying ``fault`` (to open and future connections); return its handle."""
        handle = FaultHandle(next(self._ids), fault, Direction(direction))
        self._faults[handle.id] = handle
        log.info("proxy :%d: + %s %s", self.port, handle.direction.value, fault)
        self._update()
        return handle

    def remove(self, handle: FaultHandle) -> None:
        """Stop applying the fault (no error if it was already removed)."""
        if self._faults.pop(handle.id, None) is not None:
            log.info("proxy :%d: - %s %s", self.port, handle.direction.value, handle.fault)
            self._update()

    def clear(self) -> None:
        """Remove every fault: the proxy forwards faithfully again."""
        if self._faults:
            self._faults.clear()
            self._update()

    @contextmanager
    def applied(self, fault: Fault, direction: Direction | str = Direction.BOTH) -> Iterator[FaultHandle]:
        """Apply ``fault`` for the duration of a ``with`` block."""
        handle = self.add(fault, direction)
        try:
            yield handle
        finally:
            self.remove(handle)

    @property
    def down(self) -> bool:
        return any(isinstance(h.fault, Down) for h in self._faults.values())

    def statistics(self) -> ProxyStatistics:
        return ProxyStatistics(
            connections=self._connections_total,
            open_connections=len(self._connections),
            refused=self._refused,
            bytes_upstream=self._bytes[Direction.UPSTREAM],
            bytes_downstream=self._bytes[Direction.DOWNSTREAM],
            cut=self._cut,
            faults=tuple(self._faults.values()),
            down=self.down,
        )

    def _link_faults(self, link: Direction) -> list[FaultHandle]:
        return [h for h in self._faults.values() if h.direction.covers(link) and not isinstance(h.fault, Down)]

    def _update(self) -> None:
        now = trio.current_time()
        for conn in list(self._connections):
            if self.down:
                conn.cut(CloseKind.FIN)
                continue
            for link, shaper in conn.links.items():
                shaper.set_faults(self._link_faults(link), max(now, conn.opened))
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    # -- serving --------------------------------------------------------------------------------

    async def _serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        while True:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, self._handle, listeners)
                while not self.down:
                    await self._changed.wait()
                nursery.cancel_scope.cancel()
            for listener in listeners:  # closed: connecting now gets ECONNREFUSED
                await listener.aclose()
            while self.down:
                await self._changed.wait()
            listeners = await _listen_again(self.port, self.host)

    async def _handle(self, client: trio.SocketStream) -> None:
        self._connections_total += 1
        try:
            upstream = await trio.open_tcp_stream(self.upstream_host, self.upstream_port)
        except OSError as exc:
            self._refused += 1
            log.debug("proxy :%d: upstream unreachable (%s); resetting the client", self.port, exc)
            _set_rst_on_close(client)
            await client.aclose()
            return
        now = trio.current_time()
        links = {link: LinkShaper(random.Random(self._rng.random())) for link in (Direction.UPSTREAM, Direction.DOWNSTREAM)}
        for link, shaper in links.items():
            shaper.set_faults(self._link_faults(link), now)
        conn = _Connection(client, upstream, now, links)
        self._connections.add(conn)
        try:
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._direction, conn, Direction.UPSTREAM, client, upstream)
                    nursery.start_soon(self._direction, conn, Direction.DOWNSTREAM, upstream, client)
                    nursery.start_soon(self._watch, conn)
        finally:
            self._connections.discard(conn)
            if conn.closing is not None:
                self._cut += 1
            if conn.closing is CloseKind.RST:
                _set_rst_on_close(client)
                _set_rst_on_close(upstream)
            with trio.CancelScope(shield=True):
                await client.aclose()
                await upstream.aclose()

    async def _watch(self, conn: _Connection) -> None:
        """Carry out connection-level actions (timeout close, reset) when they fall due."""
        while True:
            changed = self._changed
            due = [d for d in (s.deadline() for s in conn.links.values()) if d is not None]
            if due:
                at, kind = min(due, key=lambda d: d[0])
                with trio.move_on_at(at):
                    await changed.wait()
                    continue
                conn.cut(kind)
                return
            await changed.wait()

    async def _direction(self, conn: _Connection, link: Direction, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        send, receive = trio.open_memory_channel[Shaped | None](_QUEUE_CHUNKS)
        shaper = conn.links[link]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read, conn, shaper, source, send)
            await self._write(conn, link, shaper, sink, receive)
        conn.done.add(link)
        if len(conn.done) == 2:  # both sides closed: the watcher has nothing left to watch
            conn.scope.cancel()

    async def _read(self, conn: _Connection, shaper: LinkShaper, source: trio.SocketStream, send: trio.MemorySendChannel[Shaped | None]) -> None:
        async with send:
            while True:
                while shaper.stalled:  # a timeout: stop reading, TCP flow control stalls the sender
                    await self._changed.wait()
                try:
                    data = await source.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    conn.cut(CloseKind.RST)  # the peer reset: pass the reset on
                    return
                if not data:
                    with contextlib.suppress(trio.BrokenResourceError):
                        await send.send(None)
                    return
                shaped = shaper.push(data, trio.current_time())
                try:
                    await send.send(shaped)
                except trio.BrokenResourceError:
                    return  # the writer ended (the connection is being cut)
                if shaped.close is not None:
                    return

    async def _write(self, conn: _Connection, link: Direction, shaper: LinkShaper, sink: trio.SocketStream, receive: trio.MemoryReceiveChannel[Shaped | None]) -> None:
        async with receive:
            async for shaped in receive:
                if shaped is None:  # end of data: half-close, as the peer did
                    try:
                        await sink.send_eof()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        conn.cut(CloseKind.RST)
                    return
                for segment in shaped.segments:
                    await trio.sleep_until(segment.at)
                    while shaper.stalled:
                        await self._changed.wait()
                    try:
                        await sink.send_all(segment.data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        conn.cut(CloseKind.RST)
                        return
                    self._bytes[link] += len(segment.data)
                if shaped.close is not None:
                    conn.cut(shaped.close)
                    return


async def _listen_again(port: int, host: str) -> list[trio.SocketListener]:
    """Bind the port the proxy had (a connection still closing may hold it for a moment)."""
    for attempt in range(100):
        try:
            return await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or attempt == 99:
                raise
            await trio.sleep(0.01)
    raise AssertionError("unreachable")


@asynccontextmanager
async def open_proxy(
    upstream_host: str,
    upstream_port: int,
    *,
    listen_host: str = "127.0.0.1",
    listen_port: int = 0,
    seed: int | None = None,
) -> AsyncIterator[FaultProxy]:
    """Run a proxy to ``upstream_host:upstream_port`` for the duration of the block.

    Yields once it is listening (``proxy.port`` is the bound port). ``seed`` makes jitter and
    slice sizes reproducible. On exit every connection is closed.
    """
    proxy = FaultProxy(upstream_host, upstream_port, listen_host, listen_port, random.Random(seed))
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy._serve)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
