"""Persist batches to Redis streams: one atomic, idempotent Lua script per batch.

The sink is used from trio; redis.asyncio runs in the trio-asyncio loop opened by
:func:`weir.bridge.open_asyncio_loop`, and every public call crosses the bridge once.

Layout and idempotency rule: docs/redis-layout.md and weir/sinks/persist.lua.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import redis.asyncio as aioredis
import redis.exceptions as rex
import trio
import trio_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from weir.bridge import call_asyncio
from weir.errors import Fatal, certificate_refused
from weir.events import Chunk
from weir.sinks.keys import (
    DEFAULT_PREFIX,
    PartitionKeys,
    partition_keys,
    validate_name,
    validate_prefix,
)
from weir.redact import redact_url

_U64_MAX = (1 << 64) - 1

PERSIST_SCRIPT: bytes = importlib.resources.files("weir.sinks").joinpath("persist.lua").read_bytes()
PERSIST_SHA: str = hashlib.sha1(PERSIST_SCRIPT).hexdigest()

# Error codes that mean "the server cannot take this write now, try again later". They start the
# message, or follow a "-" when a command inside the script failed (Redis 6.2 reports a refused
# first write as "Error running script (...): @user_script:106: -READONLY You can't write ...").
_TRANSIENT_CODES = (
    "LOADING",
    "BUSY",
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
    "MISCONF",
    "OOM",
)
# persist.lua's refusal when the stored cursor is below the expected one: "WEIRBEHIND <stored|-> <expected>".
_BEHIND = re.compile(r"WEIRBEHIND (-|\d+) (\d+)$")
_TRANSIENT_MESSAGE = re.compile(r"(?:^|\s-)(?:" + "|".join(_TRANSIENT_CODES) + r")\b")


@attrs.frozen(kw_only=True)
class Cursor:
    """The persisted position of a partition: resume after ``position``.

    Attributes:
        position: highest source position that is durable (events at or below it are skipped).
        token: source-specific resume state written with it ("" when the source has none).
    """

    position: int
    token: str


@attrs.frozen(kw_only=True)
class WriteResult:
    """What one :meth:`RedisSink.write` did.

    Attributes:
        appended: events appended to the stream.
        skipped: events not appended because they were already persisted (at or below the cursor)
            or, see ``stale``, their id was not above the stream's last id.
        dead_appended: dead letters appended (those with a position at or below the cursor are not).
        cursor: the stored cursor after the write: max(previous cursor, the batch's ``through``).
        stale: part of ``skipped``: events above the cursor whose id was at or below the stream's
            last id. Non-zero means the cursor key was lost (e.g. deleted by hand) or events
            arrived out of order; worth a warning, never an error.
    """

    appended: int
    skipped: int
    dead_appended: int
    cursor: int
    stale: int = 0


class SinkUnavailable(Exception):
    """Redis cannot take the write now (refused, reset, timeout, LOADING, BUSY, READONLY, ...).

    Transient: retry the same batch later; the write is idempotent, so retrying after an unknown
    outcome (e.g. a timeout after the script ran) is safe. The redis error is the ``__cause__``.
    """

    #: True when Redis (or the link to it) did not answer within the socket timeout: the write may
    #: simply be too big for a slow link, so the persist actor retries it in smaller parts.
    timed_out: bool = False


class RedisRefused(Fatal):
    """Redis refused weir's credentials or permissions (WRONGPASS, NOAUTH, an ACL's NOPERM): the
    configuration is wrong, and retrying will not make it right."""


class SinkBehind(Exception):
    """Redis holds an older cursor than one this writer saw stored: it lost acknowledged writes.

    A stored cursor never goes down, so this means Redis went back in time — a restart whose last
    writes were not in its AOF yet, a failover to a replica that lagged, or keys deleted by hand.
    Not transient and not to be written over: writing on would move the cursor past the lost
    events for good. The pipeline must start again from the stored cursor, which re-reads them
    from the network.

    Attributes:
        partition: the partition.
        stored: the cursor Redis holds (None: it has none).
        expected: the cursor this writer had seen stored.
    """

    def __init__(self, cursor_key: str, partition: str, stored: int | None, expected: int) -> None:
        held = "no cursor" if stored is None else f"cursor {stored}"
        super().__init__(
            f"{cursor_key} holds {held}, below {expected} which was already acknowledged: Redis lost "
            f"acknowledged writes (a restart before they reached its AOF, a failover to a lagging "
            f"replica, or the keys were reset); the partition must be read again from "
            f"{'its start' if stored is None else stored}"
        )
        self.partition = partition
        self.stored = stored
        self.expected = expected


async def call_packed(client: aioredis.Redis, command: bytes) -> Any:
    """Send a command packed in RESP on a pooled connection; its raw reply (no redis-py callback).

    An error reply is raised as redis-py raises it; a connection that failed mid-command was
    disconnected by redis-py, and the pool reconnects it on next use.
    """
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(command)
        return await conn.read_response()
    finally:
        await pool.release(conn)


class RedisSink:
    """Writes batches of one source's partitions to Redis.

    Use ``async with open_redis_sink(...)`` or :meth:`open` / :meth:`aclose`, inside
    ``async with weir.bridge.open_asyncio_loop():``.

    Args:
        url: e.g. ``redis://127.0.0.1:6379/0``.
        prefix: first part of every key's hash tag.
        source: the network name, e.g. ``"farcaster"``; events of other sources are refused.
        socket_timeout: seconds a connect or a reply may take before :class:`SinkUnavailable`.
        maxlen: approximate MAXLEN of each events stream; ``None`` (the default) never trims.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        source: str,
        socket_timeout: float = 5.0,
        maxlen: int | None = None,
    ) -> None:
        if not (socket_timeout > 0 and math.isfinite(socket_timeout)):
            raise ValueError(f"socket_timeout must be a positive number of seconds, not {socket_timeout!r}")
        if maxlen is not None and (type(maxlen) is not int or maxlen < 1):
            raise ValueError(f"maxlen must be a positive int or None, not {maxlen!r}")
        self.url = url
        self._shown_url = redact_url(url)  # for messages: without the password
        self.prefix = validate_prefix(prefix)
        self.source = validate_name("source", source)
        self.socket_timeout = socket_timeout
        self.maxlen = maxlen
        self._maxlen_arg = _bulk(b"" if maxlen is None else b"%d" % maxlen)
        self._keys: dict[str, tuple[str, str, str]] = {}
        self._packed_keys: dict[str, bytes] = {}
        self._packed_strs: dict[str, bytes] = {}
        self._client: aioredis.Redis | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the client (connections are made on first use). Idempotent."""
        if self._client is None:
            if trio_asyncio.current_loop.get(None) is None:
                raise RuntimeError(
                    "RedisSink needs an asyncio loop: open it inside `async with open_asyncio_loop():`"
                )
            self._client = await call_asyncio(self._open_aio)

    async def _open_aio(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self.url,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.socket_timeout,
            # Retrying is the persist actor's job (backoff + circuit breaker), not the client's.
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
            health_check_interval=0,
            decode_responses=False,
        )

    async def aclose(self) -> None:
        """Close all connections. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await call_asyncio(client.aclose)

    async def __aenter__(self) -> RedisSink:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- keys --------------------------------------------------------------------------------

    def keys(self, partition: str) -> PartitionKeys:
        """The Redis keys of ``partition`` (see :mod:`weir.sinks.keys`)."""
        return partition_keys(self.source, partition, prefix=self.prefix)

    def _key_tuple(self, partition: str) -> tuple[str, str, str]:
        keys = self._keys.get(partition)
        if keys is None:
            keys = self._keys[partition] = self.keys(partition).as_tuple()
        return keys

    # -- operations --------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise :class:`SinkUnavailable` unless Redis answers."""
        await self._call(self._ping_aio)

    async def _ping_aio(self) -> None:
        await self._require_client().ping()

    async def read_cursor(self, partition: str) -> Cursor | None:
        """The persisted cursor of ``partition``, or None if nothing was ever persisted."""
        cursor_key = self._key_tuple(partition)[1]
        position, token = await self._call(self._read_cursor_aio, cursor_key)
        if position is None:
            return None
        return Cursor(position=int(position), token=(token or b"").decode())

    async def _read_cursor_aio(self, cursor_key: str) -> list[bytes | None]:
        return await self._require_client().hmget(cursor_key, ["position", "token"])

    async def read_since(self, partition: str, position: int, *, limit: int = 1_000_000,
                         page: int = 1000) -> list[dict[str, str]]:
        """The fields of the stream entries at positions from ``position`` on (oldest first, at most
        ``limit``), without their ``data``: what a source whose positions are not identities
        (Jetstream) rebuilds its memory of recent events from after a restart.

        Raises:
            SinkUnavailable: Redis cannot answer now.
        """
        events_key = self._key_tuple(partition)[0]
        out: list[dict[str, str]] = []
        start = f"{position}-0"
        while len(out) < limit:
            entries = await self._call(self._xrange_aio, events_key, start, min(page, limit - len(out)))
            for _, fields in entries:
                out.append({name.decode(): value.decode(errors="replace") for name, value in fields.items() if name != b"data"})
            if len(entries) < page:
                break
            start = "(" + entries[-1][0].decode()
        return out

    async def _xrange_aio(self, key: str, start: str, count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        return await self._require_client().xrange(key, min=start, max="+", count=count)

    async def check_behind(self, partition: str, expect: int) -> None:
        """Raise :class:`SinkBehind` if the stored cursor is below ``expect`` (or gone).

        Raises:
            SinkUnavailable: Redis cannot answer now.
        """
        cursor = await self.read_cursor(partition)
        if cursor is None or cursor.position < expect:
            stored = None if cursor is None else cursor.position
            raise SinkBehind(self._key_tuple(partition)[1], partition, stored, expect)

    async def write(self, partition: str, chunks: list[Chunk], *, expect: int | None = None) -> WriteResult:
        """Append the events and dead letters of ``chunks`` and advance the cursor, atomically.

        All chunks must belong to ``partition`` (of this sink's source); together they are one
        EVALSHA of persist.lua. Events at or below the stored cursor are skipped, so writing the
        same batch again is harmless. The cursor becomes max(stored, highest ``through``), with
        the token of the chunk that has that ``through``.

        ``expect`` is a cursor the caller knows was stored (what its last write returned, or what
        it resumed from): if Redis now holds less, nothing is written and :class:`SinkBehind` is
        raised, because the events between were acknowledged and lost.

        Raises:
            SinkBehind: the stored cursor is below ``expect``: Redis lost acknowledged writes.
            SinkUnavailable: Redis is unreachable or cannot write now; retry the same batch.
            ValueError: the batch is malformed (empty, wrong partition or source, a position out
                of the uint64 range, an event above its chunk's ``through``).
            redis.exceptions.ResponseError: anything else Redis refuses (e.g. WRONGTYPE).
        """
        command = self._pack_evalsha(partition, chunks, expect)
        try:
            appended, skipped, dead_appended, cursor, stale = await self._call(self._eval_aio, command)
        except rex.ResponseError as exc:
            behind = _BEHIND.match(str(exc))
            if behind is None:
                raise
            stored = None if behind[1] == "-" else int(behind[1])
            raise SinkBehind(self._key_tuple(partition)[1], partition, stored, int(behind[2])) from None
        return WriteResult(
            appended=appended,
            skipped=skipped,
            dead_appended=dead_appended,
            cursor=int(cursor),
            stale=stale,
        )

    def _pack_evalsha(self, partition: str, chunks: list[Chunk], expect: int | None = None) -> bytes:
        """The whole EVALSHA command, RESP-encoded (ARGV layout in persist.lua).

        The hot path. Packing here rather than handing ~15 arguments per event to redis-py is
        ~5x cheaper: the constant field names are pre-encoded, and each event is one bytes
        formatting operation (measured: docs/redis-layout.md, "Throughput").
        """
        if not chunks:
            raise ValueError("write() needs at least one chunk")
        source = self.source
        packed_strs = self._packed_strs
        through = -1
        token = ""
        parts: list[bytes] = []
        append = parts.append
        count = 0
        field_args = 0
        dead: list[bytes] = []
        # Values repeat within a batch (a block's number and timestamp, message types, active fids):
        # each is packed once per batch. Ints and strs are cached apart (1 == True == 1.0 as keys).
        packed_ints: dict[int, bytes] = {}
        packed_texts: dict[str, bytes] = {}
        last_time = last_ts = None
        for chunk in chunks:
            if chunk.partition != partition:
                raise ValueError(f"chunk of partition {chunk.partition!r} in a batch for {partition!r}")
            chunk_through = chunk.through
            if type(chunk_through) is not int or not 0 <= chunk_through <= _U64_MAX:
                raise ValueError(f"chunk through {chunk_through!r} is not a uint64")
            if chunk_through >= through:
                through = chunk_through
                token = chunk.token
            for event in chunk.events:
                position = event.position
                sub = event.sub
                if (
                    type(position) is not int
                    or not 0 <= position <= chunk_through
                    or type(sub) is not int
                    or not 0 <= sub <= _U64_MAX
                    or event.partition != partition
                    or event.source != source
                ):
                    raise ValueError(_bad_event(event, source, partition, chunk_through))
                timestamp = event.timestamp
                # Only a positive float reuses the text of the last one, itself a float: 5 == 5.0
                # and -0.0 == 0.0 are written differently.
                if timestamp != last_time or type(timestamp) is not float or not timestamp > 0.0:
                    last_ts = _bulk(str(timestamp).encode())
                    last_time = timestamp if type(timestamp) is float else None
                payload = event.payload
                key = event.key
                fields = event.fields
                n_fields = len(fields)
                position_text = b"%d" % position
                sub_text = b"0" if sub == 0 else b"%d" % sub
                append(
                    _EVENT
                    % (
                        len(position_text), position_text,
                        len(position_text) + 1 + len(sub_text), position_text, sub_text,
                        _FIELD_COUNTS[n_fields] if n_fields < 64 else _bulk(b"%d" % (8 + 2 * n_fields)),
                        packed_strs.get(event.kind) or self._pack_str(event.kind),
                        len(payload), payload,
                        len(key), key,
                        last_ts,
                    )
                )  # fmt: skip
                if n_fields:
                    field_args += 2 * n_fields
                    for name, value in fields.items():
                        append(packed_strs.get(name) or self._pack_str(name))
                        if type(value) is int:
                            packed = packed_ints.get(value)
                            if packed is None:
                                packed = packed_ints[value] = _bulk(b"%d" % value)
                        elif type(value) is str:
                            # per batch, not in the sink's cache: values are many (DIDs, rkeys) and
                            # would crowd out the kinds and names that cache is for
                            packed = packed_texts.get(value)
                            if packed is None:
                                packed = packed_texts[value] = _bulk_str(value)
                        else:
                            packed = _bulk(value if type(value) is bytes else str(value).encode())
                        append(packed)
                count += 1
            for letter in chunk.dead:
                position = letter.position
                if position is None:
                    dead.append(_bulk(b""))
                elif type(position) is int and 0 <= position <= _U64_MAX:
                    dead.append(_bulk(b"%d" % position))
                else:
                    raise ValueError(f"dead letter position {position!r} is not a uint64 or None")
                dead += (
                    _bulk_str(letter.reason),
                    _bulk(letter.payload),
                    _bulk(str(letter.received).encode()),
                )
        keys = self._packed_keys.get(partition)
        if keys is None:
            keys = self._packed_keys[partition] = b"".join(
                _bulk_str(k) for k in self.keys(partition).as_tuple()
            )
        n_dead = len(dead) // 4
        if expect is not None and (type(expect) is not int or not 0 <= expect <= _U64_MAX):
            raise ValueError(f"expected cursor {expect!r} is not a uint64 or None")
        # EVALSHA sha 3, 3 keys, through token maxlen expect E, per event 3 + 8 + its fields, D, dead.
        n_args = 3 + 3 + 5 + 11 * count + field_args + 1 + len(dead)
        head = b"*%d\r\n%b%b%b%b%b%b%b" % (
            n_args,
            _EVALSHA_HEAD,
            keys,
            _bulk(b"%d" % through),
            _bulk_str(token),
            self._maxlen_arg,
            _bulk(b"" if expect is None else b"%d" % expect),
            _bulk(b"%d" % count),
        )
        return b"".join((head, *parts, _bulk(b"%d" % n_dead), *dead))

    def _pack_str(self, value: str) -> bytes:
        """RESP bulk string of ``value``, cached: event kinds and field names are few."""
        packed = _bulk_str(value)
        if len(self._packed_strs) < 4096:  # never grow without bound
            self._packed_strs[value] = packed
        return packed

    async def _eval_aio(self, command: bytes) -> list[Any]:
        """Send a packed EVALSHA on a pooled connection; on NOSCRIPT load the script and resend."""
        client = self._require_client()
        try:
            return await call_packed(client, command)
        except rex.NoScriptError:
            # First use on this server, or it restarted or flushed its scripts (server-wide: any
            # connection of the pool loads it for all).
            await call_packed(client, _SCRIPT_LOAD)
            return await call_packed(client, command)

    # -- plumbing ----------------------------------------------------------------------------

    def _require_client(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("RedisSink is not open: use `async with open_redis_sink(...)` or await open()")
        return self._client

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await call_redis(self._shown_url, fn, *args)


async def call_redis(shown_url: str, fn: Any, *args: Any) -> Any:
    """Run ``fn`` in asyncio (one crossing), mapping transient redis errors to SinkUnavailable.

    ``shown_url`` names the server in messages (without its password). Used by every weir client of Redis.

    A connection that fails outright is tried once more at once: after a server restart the
    pooled connection is stale, and every operation here is idempotent.
    """
    for attempt in (1, 2):
        try:
            return await call_asyncio(fn, *args)
        except (rex.AuthenticationError, rex.AuthorizationError, rex.NoPermissionError) as exc:
            # configuration, not availability: fatal (weir.errors), never a retry loop
            raise RedisRefused(f"redis at {shown_url} refused weir ({type(exc).__name__}: {exc}); "
                               f"check the user, password and ACL of redis.url") from exc
        except rex.BusyLoadingError as exc:
            raise SinkUnavailable(f"redis at {shown_url} is loading its data: {exc}") from exc
        except rex.ConnectionError as exc:
            refused = certificate_refused(exc, f"redis at {shown_url}")
            if refused is not None:
                raise refused from exc
            if attempt == 1:
                continue
            raise SinkUnavailable(f"redis at {shown_url} unavailable: {exc}") from exc
        except (rex.TimeoutError, TimeoutError) as exc:
            unavailable = SinkUnavailable(f"redis at {shown_url} did not answer in time: {exc!r}")
            unavailable.timed_out = True
            raise unavailable from exc
        except OSError as exc:
            raise SinkUnavailable(f"redis at {shown_url} unavailable: {exc!r}") from exc
        except rex.ResponseError as exc:
            if is_transient_response(exc):
                raise SinkUnavailable(f"redis at {shown_url} cannot write now: {exc}") from exc
            raise
    raise AssertionError("unreachable")


def is_transient_response(exc: rex.ResponseError) -> bool:
    """Whether a Redis error reply means "try again later" rather than "this will never work"."""
    if isinstance(
        exc,
        (rex.ReadOnlyError, rex.NoScriptError, rex.OutOfMemoryError, rex.TryAgainError, rex.ClusterDownError),
    ):
        # NOSCRIPT here means it was missing again right after SCRIPT LOAD: the server restarted.
        return True
    if getattr(exc, "status_code", None) in _TRANSIENT_CODES:
        return True
    return _TRANSIENT_MESSAGE.search(str(exc)) is not None


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _bulk_str(value: str) -> bytes:
    return _bulk(value.encode())


# One event in ARGV: position, stream id, N, then N field/value arguments (kind, data, key, ts,
# then Event.fields). N is packed from _FIELD_COUNTS, the kind arrives pre-packed.
_EVENT = (
    b"$%d\r\n%b\r\n$%d\r\n%b-%b\r\n%b"
    b"$4\r\nkind\r\n%b"
    b"$4\r\ndata\r\n$%d\r\n%b\r\n"
    b"$3\r\nkey\r\n$%d\r\n%b\r\n"
    b"$2\r\nts\r\n%b"
)
_FIELD_COUNTS = [_bulk(b"%d" % (8 + 2 * extra)) for extra in range(64)]
_EVALSHA_HEAD = _bulk(b"EVALSHA") + _bulk(PERSIST_SHA.encode()) + _bulk(b"3")
_SCRIPT_LOAD = b"*3\r\n" + _bulk(b"SCRIPT") + _bulk(b"LOAD") + _bulk(PERSIST_SCRIPT)


def _bad_event(event: Any, source: str, partition: str, through: int) -> str:
    return (
        f"cannot persist event {event.source!r}/{event.partition!r} position {event.position!r} "
        f"sub {event.sub!r} in a batch of {source!r}/{partition!r} with through {through}: "
        f"positions and subs must be uint64 ints, positions at most the chunk's through"
    )


@asynccontextmanager
async def open_redis_sink(
    url: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    source: str,
    socket_timeout: float = 5.0,
    maxlen: int | None = None,
) -> AsyncIterator[RedisSink]:
    """An open :class:`RedisSink`, closed on exit. Needs an asyncio loop (open_asyncio_loop)."""
    sink = RedisSink(url, prefix=prefix, source=source, socket_timeout=socket_timeout, maxlen=maxlen)
    await sink.open()
    try:
        yield sink
    finally:
        with trio.CancelScope(shield=True):
            await sink.aclose()
