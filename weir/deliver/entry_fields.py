"""A stream entry's fields decoded: ids, kind, time, and each source's routing fields typed.

Shared by the targets that turn an entry into something structured (Parquet rows in
weir/deliver/parquet_rows.py, webhook bodies in weir/deliver/webhook_messages.py). Pure and free of
any target's library, so a webhook does not need pyarrow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from weir.deliver.decisions import parse_entry_id


class EntryError(ValueError):
    """The entry cannot be decoded (a field missing or not of its type)."""


UINT64 = "uint64"
STRING = "string"

#: The routing fields weir writes per source (docs/redis-layout.md, atproto.md, ethereum.md) and their types.
ROUTING: dict[str, tuple[tuple[str, str], ...]] = {
    "farcaster": (("block", UINT64), ("fid", UINT64), ("type", STRING)),
    "atproto": tuple((name, STRING) for name in ("did", "collection", "rkey", "action", "rev", "cid")),
    "ethereum": (
        ("chain", UINT64), ("block", UINT64), ("block_hash", STRING), ("log_index", UINT64), ("tx", STRING),
        ("address", STRING), ("topic0", STRING), ("event", STRING), ("standard", STRING), ("decoded", STRING),
    ),
}
BUILT_IN = ("kind", "data", "key", "ts")
_UINT64_MAX = (1 << 64) - 1


def decode_entry(source: str, entry_id: str, fields: Mapping[bytes, bytes]) -> dict[str, object]:
    """The entry as typed values: ``stream_id``, ``position``, ``sub``, ``kind`` (text), ``key`` and
    ``data`` (bytes or None), ``ts`` (microseconds, None when absent or 0), each routing field of
    ``source`` (None when absent), and ``extra``: every other field as (name, text) pairs, or None.

    Raises:
        EntryError: ``kind`` missing, ``ts`` not a finite number, or a routing field not of its type
            (say a ``fid`` that is not a decimal uint64).
    """
    try:
        position, sub = parse_entry_id(entry_id)
    except ValueError as exc:
        raise EntryError(str(exc)) from None
    kind = fields.get(b"kind")
    if kind is None:
        raise EntryError(f"entry {entry_id} has no kind field")
    decoded: dict[str, object] = {
        "stream_id": entry_id, "position": position, "sub": sub, "kind": text(kind),
        "key": fields.get(b"key"), "ts": _timestamp(entry_id, fields.get(b"ts")), "data": fields.get(b"data"),
    }
    routing = ROUTING.get(source, ())
    for name, kind_of_value in routing:
        raw = fields.get(name.encode())
        decoded[name] = None if raw is None else _typed(entry_id, name, kind_of_value, raw)
    known = {*BUILT_IN, *(name for name, _ in routing)}
    extra = [(text(name), text(value)) for name, value in fields.items() if text(name) not in known]
    decoded["extra"] = extra or None
    return decoded


def _timestamp(entry_id: str, raw: bytes | None) -> int | None:
    """``ts`` (unix seconds, decimal) as microseconds; 0 or absent (the source gives none): None."""
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise EntryError(f"entry {entry_id}: ts {raw[:40]!r} is not a number") from None
    if not math.isfinite(seconds) or not 0 <= seconds < 1e11:
        raise EntryError(f"entry {entry_id}: ts {raw[:40]!r} is not a unix time")
    return round(seconds * 1_000_000) if seconds else None


def seconds_of(fields: Mapping[bytes, bytes]) -> float:
    """The entry's ``ts`` in seconds (0.0 when absent or unreadable)."""
    try:
        seconds = float(fields.get(b"ts", b"0"))
    except ValueError:
        return 0.0
    return seconds if math.isfinite(seconds) and 0 <= seconds < 1e11 else 0.0


def _typed(entry_id: str, name: str, kind_of_value: str, raw: bytes) -> object:
    if kind_of_value == UINT64:
        if not (raw.isdigit() and int(raw) <= _UINT64_MAX):
            raise EntryError(f"entry {entry_id}: {name} {raw[:40]!r} is not a uint64")
        return int(raw)
    return text(raw)


def text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")
