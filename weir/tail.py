"""``weir tail``: print persisted events from Redis as JSON lines, decoded with the typed models."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from weir.app import REDIS_URL_FILE
from weir.bridge import call_asyncio, open_asyncio_loop
from weir.config import Config
from weir.sinks.keys import partition_keys
from weir.redact import redact_url

EXIT_OK = 0
EXIT_NOTHING = 1
EXIT_FAILURE = 1
EXIT_NO_REDIS = 4  # nothing to read from: no redis.url and no data directory (not a failure of weir's)


def missing_redis(config: Config) -> str | None:
    """Why there is no Redis to read (one line: what, where, what to do), or None if there is one."""
    data_dir = Path(config.redis.data_dir).resolve()
    if config.redis.url or data_dir.exists():
        return None
    return (f"weir tail: no Redis to read: redis.url is not set and the data directory {str(data_dir)!r} "
            "does not exist; run `weir run` (or `weir demo --data-dir DIR`) first, "
            "or give --data-dir DIR or --redis-url URL")


@asynccontextmanager
async def _redis_url_for_reading(config: Config) -> AsyncIterator[str]:
    """The configured URL; else the running service's embedded Redis; else start one on its data."""
    if config.redis.url:
        yield config.redis.url
        return
    data_dir = Path(config.redis.data_dir).resolve()
    url_file = data_dir / REDIS_URL_FILE
    if url_file.exists():
        yield url_file.read_text().strip()
        return
    from weir.sinks.embedded_redis import RedisServerConfig, open_embedded_redis

    async with open_embedded_redis(RedisServerConfig(data_dir=data_dir)) as server:
        yield server.url


def _decode(source: str, fields: dict[bytes, bytes], raw: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for name, value in fields.items():
        key = name.decode()
        if key in ("data", "key"):
            entry[key] = "0x" + value.hex()
        else:
            entry[key] = value.decode("utf-8", "replace")
    if not raw and source == "farcaster" and b"data" in fields:
        from weir.codecs.farcaster_models import hub_event_to_json

        try:
            entry["event"] = hub_event_to_json(fields[b"data"])
            del entry["data"]
        except Exception as exc:  # a persisted entry that no longer decodes: show it raw, say why
            entry["decode_error"] = str(exc)
    return entry


async def _tail_aio(url: str, config: Config, args: argparse.Namespace, emit) -> int:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url, socket_connect_timeout=config.redis.socket_timeout)
    try:
        prefix = config.redis.prefix
        if args.partition is not None:
            partitions = [args.partition]
        else:
            pattern = f"{{{prefix}:{args.source}:*}}:events"
            found = [key.decode() async for key in client.scan_iter(match=pattern.replace("{", "\\{").replace("}", "\\}"))]
            partitions = sorted((k[len(prefix) + len(args.source) + 3 : k.index("}")] for k in found), key=_natural)
        if not partitions:
            print(f"weir tail: no {args.source} events under prefix {prefix!r} in {redact_url(url)}", file=sys.stderr)
            return EXIT_NOTHING
        last_ids: dict[str, bytes] = {}
        for partition in partitions:
            stream = partition_keys(args.source, partition, prefix=prefix).events
            if args.count:
                entries = list(reversed(await client.xrevrange(stream, count=args.count)))
            else:
                entries = await client.xrange(stream)
            for entry_id, fields in entries:
                emit({"partition": partition, "id": entry_id.decode(), **_decode(args.source, fields, args.raw)})
            last_ids[stream] = entries[-1][0] if entries else b"$"
        while args.follow:
            answer = await client.xread(last_ids, block=1000, count=500)
            for stream, entries in answer or []:
                stream_name = stream.decode()
                partition = stream_name[stream_name.rindex(":", 0, stream_name.index("}")) + 1 : stream_name.index("}")]
                for entry_id, fields in entries:
                    emit({"partition": partition, "id": entry_id.decode(), **_decode(args.source, fields, args.raw)})
                    last_ids[stream_name] = entry_id
        return EXIT_OK
    finally:
        await client.aclose()


def _natural(partition: str) -> tuple[int, str]:
    return (int(partition), "") if partition.isdigit() else (1 << 62, partition)


def _emit(entry: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(entry, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words: the OS's error if there is one, else redis-py's."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
            return os.strerror(cause.errno)
        if isinstance(cause, OSError) and cause.strerror:  # e.g. socket.gaierror: errno < 0
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return str(exc).strip() or type(exc).__name__


async def run_tail(config: Config, args: argparse.Namespace) -> int:
    import redis.exceptions

    missing = missing_redis(config)
    if missing is not None:  # checked before any task starts: one line, not an exception group
        print(missing, file=sys.stderr)
        return EXIT_NO_REDIS
    async with open_asyncio_loop(), _redis_url_for_reading(config) as url:
        try:
            return await call_asyncio(_tail_aio, url, config, args, _emit)
        except (BrokenPipeError, KeyboardInterrupt):
            return EXIT_OK
        except trio.Cancelled:
            raise
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            print(f"weir tail: cannot reach redis at {redact_url(url)}: {_reason(exc)}", file=sys.stderr)
            return EXIT_FAILURE
        except redis.exceptions.ResponseError as exc:  # e.g. WRONGTYPE: the key is not weir's stream
            print(f"weir tail: redis at {redact_url(url)} refused a command: {exc}", file=sys.stderr)
            return EXIT_FAILURE
