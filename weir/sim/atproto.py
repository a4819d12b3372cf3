"""A simulated AT Protocol relay (firehose) and Jetstream server, on trio-websocket.

Firehose, ``GET /xrpc/com.atproto.sync.subscribeRepos[?cursor=N]``, behaves like a relay where an
ingestor can notice (shared/notes/protocols.md §2):

- no cursor: live (from the newest released event on); ``cursor`` at or below the newest: replay
  of the events after it (with ``inclusive_replay`` the one *at* the cursor too, as some relays
  do), then live; a cursor older than the retained history: ``#info OutdatedCursor`` then replay
  from the oldest retained; a cursor in the future: a ``FutureCursor`` error frame and close;
- ``drop_after``: a ``ConsumerTooSlow`` error frame and close after that many frames, and a
  consumer whose socket does not drain within ``slow_timeout`` is dropped without a word;
- ``reject_first``: the first N handshakes get HTTP 429 with ``Retry-After: 0``.

Jetstream, ``GET /subscribe?wantedCollections=…&wantedDids=…&cursor=<µs>&compress=true``: one JSON
message per op; the cursor is inclusive; ``compress=true`` sends zstd frames *without* Bluesky's
dictionary (it is not available offline; the client accepts a dictionary file for real servers).

Control hooks for tests: :meth:`AtprotoSim.drop_connections`, :meth:`AtprotoSim.send_info`,
:attr:`AtprotoSim.handshakes`.
"""

from __future__ import annotations

import bisect
import logging
from urllib.parse import parse_qs, urlsplit

import trio
import trio_websocket

from weir.sim.atproto_data import AtprotoSimConfig, SimEvent, error_frame, generate_history, info_frame

log = logging.getLogger("weir.sim.atproto")

FIREHOSE_PATH = "/xrpc/com.atproto.sync.subscribeRepos"
JETSTREAM_PATH = "/subscribe"
RELEASE_TICK = 0.01


class AtprotoSim:
    """The history of one simulated relay, released at ``config.rate``, served to any number of clients."""

    def __init__(self, config: AtprotoSimConfig, *, slow_timeout: float = 10.0) -> None:
        self.config = config
        self.events: list[SimEvent] = generate_history(config)
        self.seqs = [event.seq for event in self.events]
        self.js_messages = [(time_us, message) for event in self.events for time_us, message in event.jetstream]
        self.js_times = [time_us for time_us, _ in self.js_messages]
        self.released = len(self.events) if not config.rate else 0
        self.slow_timeout = slow_timeout
        self.handshakes = 0
        self.connections = 0
        self._changed = trio.Event()
        self._drop = trio.Event()
        self._infos: list[bytes] = []

    # ------------------------------------------------------------------ control

    def drop_connections(self) -> None:
        """Close every open connection (clients see an abrupt close)."""
        self._drop.set()
        self._drop = trio.Event()

    def send_info(self, name: str, message: str = "") -> None:
        """Send an ``#info`` frame to every firehose client."""
        self._infos.append(info_frame(name, message))
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

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
            server = await nursery.start(
                lambda task_status: trio_websocket.serve_websocket(
                    self._handle, host, port, None, handler_nursery=nursery, max_message_size=1 << 20,
                    message_queue_size=4, task_status=task_status,
                )
            )
            task_status.started(server.port)

    async def _release(self) -> None:
        start = trio.current_time()
        while self.released < len(self.events):
            await trio.sleep(RELEASE_TICK)
            due = min(len(self.events), int((trio.current_time() - start) * self.config.rate))
            if due > self.released:
                self.released = due
                self._notify()

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        self.handshakes += 1
        if self.handshakes <= self.config.reject_first:
            await request.reject(429, extra_headers=[(b"Retry-After", b"0")], body=b"rate limited")
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
        while True:
            changed = self._changed
            while infos_seen < len(self._infos):
                await self._send(ws, self._infos[infos_seen])
                infos_seen += 1
            while index < self.released:
                if self.config.drop_after is not None and sent >= self.config.drop_after:
                    await ws.send_message(error_frame("ConsumerTooSlow", "Stream consumer too slow"))
                    return
                await self._send(ws, self.events[index].frame)
                index += 1
                sent += 1
            await changed.wait()

    async def _jetstream(self, ws: trio_websocket.WebSocketConnection, cursor: int | None, query: dict[str, list[str]]) -> None:
        import json

        collections = query.get("wantedCollections", [])
        exact = {c for c in collections if not c.endswith("*")}
        prefixes = tuple(c[:-1] for c in collections if c.endswith("*"))
        dids = set(query.get("wantedDids", []))
        compressor = None
        if query.get("compress", ["false"])[0] == "true":
            import zstandard

            compressor = zstandard.ZstdCompressor()
        released_messages = lambda: bisect.bisect_right(self.js_times, self.events[self.released - 1].time_us + 10) if self.released else 0  # noqa: E731
        index = released_messages() if cursor is None else bisect.bisect_left(self.js_times, cursor)
        sent = 0
        while True:
            changed = self._changed
            limit = released_messages()
            while index < limit:
                time_us, message = self.js_messages[index]
                index += 1
                doc = json.loads(message)
                if dids and doc["did"] not in dids:
                    continue
                if collections and doc["kind"] == "commit":
                    collection = doc["commit"]["collection"]
                    if collection not in exact and not collection.startswith(prefixes):
                        continue
                if self.config.drop_after is not None and sent >= self.config.drop_after:
                    return  # Jetstream just closes
                await self._send(ws, compressor.compress(message.encode()) if compressor else message)
                sent += 1
            await changed.wait()


async def serve_atproto_sim(config: AtprotoSimConfig, host: str, port: int) -> None:
    """``python -m weir.sim atproto``: serve until cancelled, printing the ready line once listening."""
    sim = AtprotoSim(config)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(sim.serve, host, port)
        print(f"weir-sim atproto listening on {host}:{bound}", flush=True)
