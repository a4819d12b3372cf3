"""Did a system persist every offered event, and nothing else? One checker per Redis layout.

Each takes a Redis client, the events the hub offered that the system asked for (``(id, bytes)``
in order) and the keys the system wrote, and returns ``{"ok", "persisted", "expected",
"bytes_identical", "problems", ...}``: every entry is compared with its offered event, id and bytes.

- weir: ``{weir:farcaster:<shard>}:events``, entry id ``<event id>-0``, field ``data`` = the node's
  bytes; the cursor hash holds the last id; no dead letters.
- naive: ``naive:<shard>:events``, the same entry ids and ``data``; ``naive:<shard>:cursor``.
- Shuttle: ``hub:<host>:evt:msg:<shard>``, entry ids chosen by Redis (``*``), field ``d`` = the
  event *re-encoded* by hub-nodejs 0.11 (protobufjs/ts-proto). Its schema predates Snapchain's
  ``HubEvent.block_number``, ``shard_index`` and ``timestamp``, so those three are dropped, and it
  writes empty packed repeated fields the node omits: its bytes can never equal the node's. The
  check is then: ids exact and in order, and each event equal *as a protobuf message* (protobuf
  package, deterministic encoding) to the offered one without those three fields.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import redis

from weir.codecs.farcaster_keys import scan_hub_event
from weir.sinks.keys import partition_keys

PAGE = 20_000
SHUTTLE_DROPS = ("block_number", "shard_index", "timestamp")  # HubEvent fields hub-nodejs 0.11 lacks
MAX_PROBLEMS = 5


def read_stream(client: redis.Redis, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    out: list[tuple[bytes, dict[bytes, bytes]]] = []
    start = "-"
    while True:
        page = client.xrange(key, min=start, max="+", count=PAGE)
        out.extend(page)
        if len(page) < PAGE:
            return out
        start = "(" + page[-1][0].decode()


def _result(expected: list[tuple[int, bytes]], entries: list, problems: list[str], identical: int, **extra: object) -> dict:
    if len(entries) != len(expected):
        problems.insert(0, f"{len(entries):,} persisted, {len(expected):,} expected")
    return {
        "ok": not problems,
        "persisted": len(entries),
        "expected": len(expected),
        "bytes_identical": identical,
        "problems": problems[:MAX_PROBLEMS],
        **extra,
    }


def _check_id_keyed(entries: list, expected: list[tuple[int, bytes]], field: bytes) -> tuple[list[str], int]:
    """Entries keyed ``<event id>-0`` whose ``field`` must be the offered bytes."""
    problems: list[str] = []
    identical = 0
    for (entry_id, fields), (event_id, payload) in zip(entries, expected):
        if entry_id != b"%d-0" % event_id:
            problems.append(f"entry {entry_id.decode()} where event {event_id} was expected")
        elif fields.get(field) != payload:
            problems.append(f"event {event_id}: bytes differ from the offered ones")
        else:
            identical += 1
    return problems, identical


def _check_cursor(value: bytes | None, expected: list[tuple[int, bytes]], problems: list[str]) -> None:
    last = expected[-1][0] if expected else None
    if last is not None and (value is None or int(value) != last):
        problems.append(f"cursor {value!r}, expected {last}")


def check_weir(client: redis.Redis, expected: list[tuple[int, bytes]], *, shard: int) -> dict:
    keys = partition_keys("farcaster", str(shard))
    entries = read_stream(client, keys.events)
    problems, identical = _check_id_keyed(entries, expected, b"data")
    dead = client.xlen(keys.dead)
    if dead:
        problems.append(f"{dead} dead letters")
    # weir's cursor also moves past events it filtered out (BLOCK_CONFIRMED): at least the last kept id
    position = client.hget(keys.cursor, "position")
    if expected and (position is None or int(position) < expected[-1][0]):
        problems.append(f"cursor {position!r}, expected at least {expected[-1][0]}")
    return _result(expected, entries, problems, identical)


def check_naive(client: redis.Redis, expected: list[tuple[int, bytes]], *, stream: str, cursor: str) -> dict:
    entries = read_stream(client, stream)
    problems, identical = _check_id_keyed(entries, expected, b"data")
    _check_cursor(client.get(cursor), expected, problems)
    return _result(expected, entries, problems, identical)


def check_shuttle(client: redis.Redis, expected: list[tuple[int, bytes]], *, stream: str, cursor: str, stubs: str) -> dict:
    canonical = _canonical_encoder(stubs)
    entries = read_stream(client, stream)
    problems: list[str] = []
    identical = equal = 0
    for (entry_id, fields), (event_id, payload) in zip(entries, expected):
        data = fields.get(b"d", b"")
        persisted_id = scan_hub_event(data).event_id if data else None
        if persisted_id != event_id:
            problems.append(f"entry {entry_id.decode()} holds event {persisted_id} where {event_id} was expected")
            continue
        identical += data == payload
        if canonical(data) == canonical(payload, drop=SHUTTLE_DROPS):
            equal += 1
        else:
            problems.append(f"event {event_id}: differs from the offered one beyond {', '.join(SHUTTLE_DROPS)}")
    _check_cursor(client.get(cursor), expected, problems)
    return _result(expected, entries, problems, identical, equal_but_dropped_fields=equal, dropped_fields=list(SHUTTLE_DROPS))


def _canonical_encoder(stubs: str) -> Callable[..., bytes]:
    """HubEvent bytes -> the protobuf package's deterministic encoding, optionally without some fields."""
    if stubs not in sys.path:
        sys.path.insert(0, stubs)
    import hub_event_pb2

    parse = hub_event_pb2.HubEvent.FromString

    def canonical(data: bytes, drop: tuple[str, ...] = ()) -> bytes:
        event = parse(data)
        for name in drop:
            event.ClearField(name)
        return event.SerializeToString(deterministic=True)

    return canonical
