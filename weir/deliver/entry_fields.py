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
UINT64_DIGITS = 20  # a longer decimal is not a uint64 (leading zeros aside, which weir never writes)


def columns_of(source: str) -> tuple[str, ...]:
    """The names of ``entry_values``'s values, in order, for ``source``."""
    return ("stream_id", "position", "sub", "kind", "key", "ts", "data", *(name for name, _ in ROUTING.get(source, ())),
            "extra")


def decode_entry(source: str, entry_id: str, fields: Mapping[bytes, bytes]) -> dict[str, object]:
    """The entry as typed values by name (``entry_values``, named by ``columns_of``)."""
    return dict(zip(columns_of(source), entry_values(source, entry_id, fields)))


# Per source: each routing field's name as bytes, as text, and whether it is a uint64; the field
# names that are not ``extra``. Computed once: entry_values runs per entry on delivery's hot path.
_ROUTING_KEYS = {source: tuple((name.encode(), name, kind == UINT64) for name, kind in routing)
                 for source, routing in ROUTING.items()}
_KNOWN = {source: frozenset(name.encode() for name in (*BUILT_IN, *(name for name, _ in routing)))
          for source, routing in ROUTING.items()}
_BUILT_IN_BYTES = frozenset(name.encode() for name in BUILT_IN)


def entry_values(source: str, entry_id: str, fields: Mapping[bytes, bytes]) -> tuple[object, ...]:
    """The entry as typed values in ``columns_of(source)`` order: ``stream_id``, ``position``,
    ``sub``, ``kind`` (text), ``key`` (bytes or None), ``ts`` (microseconds, None when absent or 0),
    ``data`` (bytes or None), each routing field of ``source`` (None when absent), and ``extra``:
    every other field as (name, text) pairs, or None. One tuple per entry: the hot path.

    Raises:
        EntryError: ``kind`` missing, ``ts`` not a finite number, or a routing field not of its type
            (say a ``fid`` that is not a decimal uint64).
    """
    ms, _, seq = entry_id.partition("-")
    if ms.isdecimal() and seq.isdecimal():  # what parse_entry_id accepts, without its regex (per entry)
        position, sub = int(ms), int(seq)
    else:
        try:
            position, sub = parse_entry_id(entry_id)
        except ValueError as exc:
            raise EntryError(str(exc)) from None
    get = fields.get
    kind = get(b"kind")
    if kind is None:
        raise EntryError(f"entry {entry_id} has no kind field")
    values: list[object] = [entry_id, position, sub, text(kind), get(b"key"), _timestamp(entry_id, get(b"ts")),
                            get(b"data")]
    for name, shown, uint64 in _ROUTING_KEYS.get(source, ()):
        raw = get(name)
        if raw is None:
            values.append(None)
        elif uint64:
            # The length first: int() refuses text of over 4,300 digits with a plain ValueError.
            if not (raw.isdigit() and len(raw) <= UINT64_DIGITS and int(raw) <= _UINT64_MAX):
                raise EntryError(f"entry {entry_id}: {shown} {raw[:40]!r} is not a uint64")
            values.append(int(raw))
        else:
            values.append(text(raw))
    known = _KNOWN.get(source, _BUILT_IN_BYTES)
    values.append([(text(name), text(value)) for name, value in fields.items() if name not in known] or None)
    return tuple(values)


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


def text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")
