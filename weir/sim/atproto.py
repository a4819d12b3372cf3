"""A simulated AT Protocol relay (firehose) and Jetstream server, on trio-websocket.

Firehose, ``GET /xrpc/com.atproto.sync.subscribeRepos[?cursor=N]``, behaves like a relay where an
ingestor can notice (shared/notes/protocols.md §2):

- no cursor: live (from the newest released event on); ``cursor`` at or below the newest: replay
  of the events after it (with ``inclusive_replay`` the one *at* the cursor too, as some relays
  do), then live; a cursor older than the retained history: ``#info OutdatedCursor`` then replay
  from the oldest retained; a cursor in the future: a ``FutureCursor`` error frame and close;
- ``drop_after``: a ``ConsumerTooSlow`` error frame and close after that many frames, and a
  consumer whose socket does not drain within ``slow_timeout`` is dropped without a word;
- ``reject_first``: the first N handshakes get HTTP ``reject_status`` (429, 503, …) with
  ``Retry-After: <retry_after>`` (or no such header);
- ``stale_every``: some commits carry a rev that is not above the repository's last one.
- ``history``: with a ``rate``, that many events exist at the start (a cursor then replays them);
  the others are released from the first connection on.

Jetstream, ``GET /subscribe?wantedCollections=…&wantedDids=…&cursor=<µs>&compress=true``: one JSON
message per op; the cursor is inclusive; ``reorder_at_cutover`` / ``duplicate_at_cutover`` send a
few live messages ahead of the last replayed ones, and some replayed ones twice, where a replay
turns live (as Bluesky's Jetstream does); ``compress=true`` sends zstd frames made with a shared
dictionary, as Bluesky's servers do. Like Bluesky, which publishes its dictionary in the Jetstream
repository, the simulator publishes its own (:func:`~weir.sim.atproto_data.jetstream_dictionary`)
over plain HTTP: ``GET /jetstream/zstd_dictionary`` on the same port (:attr:`AtprotoSim.dictionary_url`).

Control hooks for tests and the chaos suite: :meth:`AtprotoSim.drop_connections`,
:meth:`AtprotoSim.send_info`, :meth:`AtprotoSim.send_error`, :meth:`AtprotoSim.inject` (a bad seq / time_us, an
oversized frame or message, a commit with too many ops), :meth:`AtprotoSim.record`, :attr:`AtprotoSim.handshakes`, :attr:`AtprotoSim.handshake_times`, :attr:`AtprotoSim.dictionary_fetches`,
:attr:`AtprotoSim.late_gate`, :attr:`AtprotoSim.cutovers`.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import logging
import re
from urllib.parse import parse_qs, urlsplit

import trio
import trio_websocket
import zstandard

from weir.sim.atproto_data import (
    AtprotoSimConfig,
    SimEvent,
    error_frame,
    generate_history,
    info_frame,
    jetstream_dictionary,
)

log = logging.getLogger("weir.sim.atproto")

FIREHOSE_PATH = "/xrpc/com.atproto.sync.subscribeRepos"
JETSTREAM_PATH = "/subscribe"
DICTIONARY_PATH = "/jetstream/zstd_dictionary"
RELEASE_TICK = 0.01
MAX_REQUEST_HEAD = 16 << 10
HANDSHAKE_TIMEOUT = 10.0
_UPGRADE = re.compile(rb"\r\nupgrade:[ \t]*websocket[ \t]*\r\n", re.IGNORECASE)


class _Replayed(trio.abc.Stream):
    """``stream`` with the bytes already read from it put back in front: the simulator reads each
    request's head to tell a plain GET from a WebSocket handshake, then hands the stream on."""

    def __init__(self, stream: trio.abc.Stream, head: bytes) -> None:
        self._stream = stream
        self._head = head

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._head:
            size = len(self._head) if max_bytes is None else max_bytes
            data, self._head = self._head[:size], self._head[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


class AtprotoSim:
    """The history of one simulated relay, released at ``config.rate``, served to any number of clients."""

    def __init__(self, config: AtprotoSimConfig, *, slow_timeout: float = 10.0) -> None:
        self.config = config
        self.events: list[SimEvent] = generate_history(config)
        self.seqs = [event.seq for event in self.events]
        self.js_messages = [(time_us, message) for event in self.events for time_us, message in event.jetstream]
        self.js_times = [time_us for time_us, _ in self.js_messages]
        # messages of events[:i + 1]: a commit's ops are released together, however many it has
        self.js_released = list(itertools.accumulate(len(event.jetstream) for event in self.events))
        self.released = len(self.events) if not config.rate else min(config.history, len(self.events))
        # Test hook (reorder_at_cutover): once set to an Event, a Jetstream connection sends the
        # late (held back) messages only after it is set; a test stops weir in between.
        self.late_gate: trio.Event | None = None
        self.cutovers: list[list[int]] = []  # per Jetstream connection with a cursor: _cutover_order's plan
        self._first_client = trio.Event()
        self.slow_timeout = slow_timeout
        self.dictionary = jetstream_dictionary()
        self.handshakes = 0
        self.handshake_times: list[float] = []  # trio.current_time() of each WebSocket handshake
        self.dictionary_fetches = 0
        self.connections = 0
        self.address: tuple[str, int] | None = None  # (host, port) once serving
        self._changed = trio.Event()
        self._drop = trio.Event()
        self._infos: list[bytes] = []
        self._errors: list[bytes] = []
        # Jetstream messages sent after one with a larger time_us (on any connection): what an
        # ingestor may rightly store out of time order (the chaos checker's ``late``).
        self._max_sent_us = -1
        self.late_sent: set[int] = set()
        # Content faults (issue 10): raw items sent after a firehose event / a Jetstream message (by index).
        self.injected_frames: dict[int, list[bytes]] = {}
        self.injected_messages: dict[int, list[str]] = {}

    # ------------------------------------------------------------------ control

    def drop_connections(self) -> None:
        """Close every open connection (clients see an abrupt close)."""
        self._drop.set()
        self._drop = trio.Event()

    def send_info(self, name: str, message: str = "") -> None:
        """Send an ``#info`` frame to every firehose client."""
        self._infos.append(info_frame(name, message))
        self._notify()

    def send_error(self, name: str, message: str = "") -> None:
        """Send an error frame (``{op: -1}``) to every firehose client and close its connection,
        as a relay does (``ConsumerTooSlow``, ``FutureCursor``, …)."""
        self._errors.append(error_frame(name, message))
        self._notify()

    def inject(self, after: int, *, frame: bytes | None = None, message: str | None = None) -> None:
        """Serve a bad item over the real socket: ``frame`` right after firehose event ``after`` and
        ``message`` right after Jetstream message ``after`` (compressed like the others), on every
        connection that sends that event (live or replayed). Builders: ``forged_seq_frame``,
        ``oversized_frame``, ``too_many_ops_frame``, ``forged_time_message``, ``oversized_message``
        in :mod:`weir.sim.atproto_data`."""
        if frame is not None:
            self.injected_frames.setdefault(after, []).append(frame)
        if message is not None:
            self.injected_messages.setdefault(after, []).append(message)

    def record(self) -> dict[str, object]:
        """What it offered, for a checker in another process: the events released (all of the
        history, once a run is over) and the time_us of every Jetstream message sent late."""
        return {"released": self.released, "total": len(self.events), "late": sorted(self.late_sent)}

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @property
    def dictionary_id(self) -> int:
        return zstandard.ZstdCompressionDict(self.dictionary).dict_id()

    @property
    def dictionary_url(self) -> str:
        """Where the Jetstream zstd dictionary is published (once serving)."""
        assert self.address is not None, "not serving yet"
        host, port = self.address
        host = f"[{host}]" if ":" in host else host  # an IPv6 literal
        return f"http://{host}:{port}{DICTIONARY_PATH}"

    @property
    def oldest(self) -> int:
        retention = self.config.retention
        return 0 if retention is None else max(0, self.released - retention)

    # ------------------------------------------------------------------ serving

    async def serve(self, host: str = "127.0.0.1", port: int = 0, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started(port)`` once listening."""
        async with trio.open_nursery() as nursery:
            if self.config.rate:
                nursery.start_soon(self._release)
            listeners = await nursery.start(functools.partial(trio.serve_tcp, self._connection, port, host=host, handler_nursery=nursery))
            bound = listeners[0].socket.getsockname()[1]
            self.address = (host, bound)
            task_status.started(bound)

    async def _connection(self, stream: trio.SocketStream) -> None:
        """One TCP connection: a plain HTTP GET (the dictionary) is answered here, a WebSocket
        handshake goes to trio-websocket with the bytes read so far put back."""
        try:
            head = b""
            with trio.move_on_after(HANDSHAKE_TIMEOUT):
                while b"\r\n\r\n" not in head and len(head) < MAX_REQUEST_HEAD:
                    data = await stream.receive_some(4096)
                    if not data:
                        break
                    head += data
            if b"\r\n\r\n" not in head:
                return
            if not _UPGRADE.search(head):
                await self._plain_http(stream, head)
                return
            async with trio.open_nursery() as nursery:
                request = None
                with trio.move_on_after(HANDSHAKE_TIMEOUT):
                    request = await trio_websocket.wrap_server_stream(
                        nursery, _Replayed(stream, head), message_queue_size=4, max_message_size=1 << 20)
                if request is not None:
                    await self._handle(request)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, trio_websocket.ConnectionClosed):
            pass  # the client went away
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _plain_http(self, stream: trio.abc.Stream, head: bytes) -> None:
        method, _, rest = head.partition(b" ")
        path = urlsplit(rest.partition(b" ")[0].decode("latin-1")).path
        if method == b"GET" and path == DICTIONARY_PATH:
            self.dictionary_fetches += 1
            status, body, kind = b"200 OK", self.dictionary, b"application/octet-stream"
        else:
            status, body, kind = b"404 Not Found", b"no such resource\n", b"text/plain"
        await stream.send_all(b"HTTP/1.1 %b\r\nContent-Type: %b\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%b"
                              % (status, kind, len(body), body))

    async def _release(self) -> None:
        if self.config.history:  # the history exists, the rest comes live once someone listens
            await self._first_client.wait()
        start = trio.current_time()
        while self.released < len(self.events):
            await trio.sleep(RELEASE_TICK)
            due = min(len(self.events), self.config.history + int((trio.current_time() - start) * self.config.rate))
            if due > self.released:
                self.released = due
                self._notify()

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        self.handshakes += 1
        self.handshake_times.append(trio.current_time())
        if self.handshakes <= self.config.reject_first:
            delay = self.config.retry_after
            headers = [] if delay is None else [(b"Retry-After", f"{delay:g}".encode())]
            await request.reject(self.config.reject_status, extra_headers=headers, body=b"try again later")
            return
        parts = urlsplit(request.path)
        query = parse_qs(parts.query)
        if parts.path not in (FIREHOSE_PATH, JETSTREAM_PATH):
            await request.reject(404, body=b"no such endpoint")
            return
        try:
            cursor = int(query["cursor"][0]) if "cursor" in query else None
        except ValueError:
            await request.reject(400, body=b"invalid cursor")
            return
        ws = await request.accept()
        self.connections += 1
        self._first_client.set()
        try:
            with trio.CancelScope() as scope:
                drop = self._drop

                async def dropper() -> None:
                    await drop.wait()
                    scope.cancel()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(dropper)
                    if parts.path == FIREHOSE_PATH:
                        await self._firehose(ws, cursor)
                    else:
                        await self._jetstream(ws, cursor, query)
                    nursery.cancel_scope.cancel()
        except* (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away (or was dropped): normal for a server
        finally:
            self.connections -= 1
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await ws.aclose()

    async def _send(self, ws: trio_websocket.WebSocketConnection, message: bytes | str) -> None:
        with trio.move_on_after(self.slow_timeout) as slow:
            await ws.send_message(message)
        if slow.cancelled_caught:
            log.warning("dropping a consumer that did not drain for %.1fs", self.slow_timeout)
            raise trio.BrokenResourceError("slow consumer dropped")

    async def _firehose(self, ws: trio_websocket.WebSocketConnection, cursor: int | None) -> None:
        if cursor is None:
            index = self.released
        else:
            newest = self.seqs[self.released - 1] if self.released else -1
            if cursor > newest and cursor > self.config.first_seq - 1:
                await ws.send_message(error_frame("FutureCursor", "Cursor in the future."))
                return
            side = bisect.bisect_left if self.config.inclusive_replay else bisect.bisect_right
            index = side(self.seqs, cursor, 0, self.released)
            if index < self.oldest:
                await ws.send_message(info_frame("OutdatedCursor", "Requested cursor exceeded limit. Possibly missing events"))
                index = self.oldest
        sent = 0
        infos_seen = len(self._infos)
        errors_seen = len(self._errors)
        while True:
            changed = self._changed
            while infos_seen < len(self._infos):
                await self._send(ws, self._infos[infos_seen])
                infos_seen += 1
            if errors_seen < len(self._errors):
                await ws.send_message(self._errors[errors_seen])
                return
            while index < self.released:
                if self.config.drop_after is not None and sent >= self.config.drop_after:
                    await ws.send_message(error_frame("ConsumerTooSlow", "Stream consumer too slow"))
                    return
                await self._send(ws, self.events[index].frame)
                for frame in self.injected_frames.get(index, ()):
                    await self._send(ws, frame)
                index += 1
                sent += 1
            await changed.wait()

    async def _jetstream(self, ws: trio_websocket.WebSocketConnection, cursor: int | None, query: dict[str, list[str]]) -> None:
        collections = query.get("wantedCollections", [])
        exact = {c for c in collections if not c.endswith("*")}
        prefixes = tuple(c[:-1] for c in collections if c.endswith("*"))
        dids = set(query.get("wantedDids", []))
        compressor = None
        if query.get("compress", ["false"])[0] == "true":
            compressor = zstandard.ZstdCompressor(dict_data=zstandard.ZstdCompressionDict(self.dictionary))
        released_messages = lambda: self.js_released[self.released - 1] if self.released else 0  # noqa: E731
        index = released_messages() if cursor is None else bisect.bisect_left(self.js_times, cursor)
        sent = 0

        async def send(i: int) -> bool:
            """Send message ``i`` unless the filters drop it; False once drop_after is reached."""
            nonlocal sent
            doc = json.loads(self.js_messages[i][1])
            if dids and doc["did"] not in dids:
                return True
            if collections and doc["kind"] == "commit":
                collection = doc["commit"]["collection"]
                if collection not in exact and not collection.startswith(prefixes):
                    return True
            if self.config.drop_after is not None and sent >= self.config.drop_after:
                return False  # Jetstream just closes
            time_us, message = self.js_messages[i]
            await self._send(ws, compressor.compress(message.encode()) if compressor else message)
            for extra in self.injected_messages.get(i, ()):
                await self._send(ws, compressor.compress(extra.encode()) if compressor else extra)
            if time_us < self._max_sent_us:
                self.late_sent.add(time_us)
            self._max_sent_us = max(self._max_sent_us, time_us)
            sent += 1
            return True

        if cursor is not None:
            first, index = index, max(index, released_messages())  # the replay ends where the live part begins
            plan = self._cutover_order(first, index)
            self.cutovers.append(plan)
            for i in plan:
                while i >= released_messages():  # a live message: wait for it
                    changed = self._changed
                    if i < released_messages():
                        break
                    await changed.wait()
                if i == -1:
                    if self.late_gate is not None:
                        await self.late_gate.wait()
                    continue
                if not await send(i):
                    return
            index += min(self.config.reorder_at_cutover, len(self.js_messages) - index)
        while True:
            changed = self._changed
            limit = released_messages()
            while index < limit:
                index += 1
                if not await send(index - 1):
                    return
            await changed.wait()

    def _cutover_order(self, first: int, cutover: int) -> list[int]:
        """The messages of a replay from ``first`` to ``cutover`` and around its switch to live, in
        the order they are sent: the last ``reorder_at_cutover`` replayed ones after as many live
        ones, then the last ``duplicate_at_cutover`` replayed ones again. -1 marks where the late
        ones begin (the test hook :attr:`late_gate`)."""
        config = self.config
        held = list(range(max(first, cutover - config.reorder_at_cutover), cutover))
        ahead = list(range(cutover, min(cutover + config.reorder_at_cutover, len(self.js_messages))))
        again = list(range(max(first, cutover - config.duplicate_at_cutover), cutover))
        if not ahead:
            return [*range(first, cutover), *again]
        return [*range(first, cutover - len(held)), *ahead, -1, *held, *again]

