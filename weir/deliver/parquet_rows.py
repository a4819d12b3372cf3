"""Stream entries as Parquet rows: one schema per source (docs/delivery.md, "Parquet schema").

Every file has the common columns; a source weir knows adds its routing fields as typed columns;
any other field of an entry goes into ``extra`` (a map of strings). Pure: no file I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import attrs
import pyarrow as pa

from weir.deliver.decisions import hour_of, parse_entry_id


class RowError(ValueError):
    """The entry cannot become a row (a field missing or not of its column's type)."""


COMMON = [
    pa.field("stream_id", pa.string(), nullable=False),
    pa.field("position", pa.uint64(), nullable=False),
    pa.field("sub", pa.uint64(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("key", pa.binary()),
    pa.field("ts", pa.timestamp("us", tz="UTC")),
    pa.field("data", pa.binary()),
]
_EXTRA = pa.field("extra", pa.map_(pa.string(), pa.string()))

# The routing fields weir writes per source (docs/redis-layout.md, atproto.md, ethereum.md) as columns.
SOURCE_COLUMNS: dict[str, list[pa.Field]] = {
    "farcaster": [pa.field("block", pa.uint64()), pa.field("fid", pa.uint64()), pa.field("type", pa.string())],
    "atproto": [pa.field(name, pa.string()) for name in ("did", "collection", "rkey", "action", "rev", "cid")],
    "ethereum": [
        pa.field("chain", pa.uint64()), pa.field("block", pa.uint64()), pa.field("block_hash", pa.string()),
        pa.field("log_index", pa.uint64()), pa.field("tx", pa.string()), pa.field("address", pa.string()),
        pa.field("topic0", pa.string()), pa.field("event", pa.string()), pa.field("standard", pa.string()),
        pa.field("decoded", pa.string()),
    ],
}
_BUILT_IN = {"kind", "data", "key", "ts"}
_UINT64_MAX = (1 << 64) - 1


@attrs.frozen
class SourceSchema:
    """The Parquet schema of one source, and how an entry's fields fill it."""

    source: str
    schema: pa.Schema
    routing: tuple[pa.Field, ...]
    # Field names (bytes) with a column of their own; every other field goes into ``extra``.
    _columned: frozenset[bytes] = attrs.field(init=False)
    _routing_keys: tuple[tuple[bytes, pa.Field, bool], ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        names = {name.encode() for name in _BUILT_IN} | {column.name.encode() for column in self.routing}
        object.__setattr__(self, "_columned", frozenset(names))
        object.__setattr__(self, "_routing_keys", tuple(
            (column.name.encode(), column, pa.types.is_uint64(column.type)) for column in self.routing))

    @classmethod
    def of(cls, source: str) -> SourceSchema:
        routing = tuple(SOURCE_COLUMNS.get(source, ()))
        return cls(source, pa.schema([*COMMON, *routing, _EXTRA]), routing)

    def row(self, entry_id: str, fields: Mapping[bytes, bytes]) -> dict[str, object]:
        """The row of one entry, by column name (see :meth:`values`)."""
        return dict(zip(self.schema.names, self.values(entry_id, fields)))

    def values(self, entry_id: str, fields: Mapping[bytes, bytes]) -> tuple[object, ...]:
        """The row of one entry, its values in the schema's column order (the hot path: one
        tuple per entry, turned into columns a row group at a time by RowBuffer).

        Raises:
            RowError: ``kind`` missing, ``ts`` not a finite number, or a typed column's value not
                of its type (say a ``fid`` that is not a decimal uint64).
        """
        ms, _, seq = entry_id.partition("-")
        if ms.isdecimal() and seq.isdecimal():  # what parse_entry_id accepts, without its regex (per row)
            position, sub = int(ms), int(seq)
        else:
            try:
                position, sub = parse_entry_id(entry_id)
            except ValueError as exc:
                raise RowError(str(exc)) from None
        kind = fields.get(b"kind")
        if kind is None:
            raise RowError(f"entry {entry_id} has no kind field")
        get = fields.get
        values: list[object] = [entry_id, position, sub, _text(kind), get(b"key"), _timestamp(entry_id, get(b"ts")),
                                get(b"data")]
        for name, column, uint64 in self._routing_keys:
            raw = get(name)
            if raw is None:
                values.append(None)
            elif uint64:
                if not (raw.isdigit() and int(raw) <= _UINT64_MAX):
                    raise RowError(f"entry {entry_id}: {column.name} {raw[:40]!r} is not a uint64")
                values.append(int(raw))
            else:
                values.append(_text(raw))
        columned = self._columned
        values.append([(_text(name), _text(value)) for name, value in fields.items() if name not in columned] or None)
        return tuple(values)


def _timestamp(entry_id: str, raw: bytes | None) -> int | None:
    """``ts`` (unix seconds, decimal) as microseconds; 0 or absent (the source gives none): null."""
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise RowError(f"entry {entry_id}: ts {raw[:40]!r} is not a number") from None
    if not math.isfinite(seconds) or not 0 <= seconds < 1e11:
        raise RowError(f"entry {entry_id}: ts {raw[:40]!r} is not a unix time")
    return round(seconds * 1_000_000) if seconds else None


def seconds_of(fields: Mapping[bytes, bytes]) -> float:
    """The entry's ``ts`` in seconds for choosing its hour (0.0 when absent or unreadable)."""
    try:
        seconds = float(fields.get(b"ts", b"0"))
    except ValueError:
        return 0.0
    return seconds if math.isfinite(seconds) and 0 <= seconds < 1e11 else 0.0


def hours_of(field_maps: Iterable[Mapping[bytes, bytes]]) -> list[str]:
    """The hour (``hour_of``) of each entry's ``ts`` (``seconds_of``). Entries of one block share
    their ``ts``: each distinct value is read once."""
    known: dict[bytes | None, str] = {}
    out = []
    for fields in field_maps:
        raw = fields.get(b"ts")
        hour = known.get(raw)
        if hour is None:
            hour = known[raw] = hour_of(int(seconds_of(fields)) // 3600 * 3600)
        out.append(hour)
    return out


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


class RowBuffer:
    """Rows of one file, as value tuples, until they are written as a row group (turned into
    columns then: one C-level transpose, rather than a list append per column per row)."""

    def __init__(self, schema: SourceSchema) -> None:
        self.schema = schema
        self._rows: list[tuple[object, ...]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, values: tuple[object, ...]) -> None:
        """One row, as :meth:`SourceSchema.values` gives it."""
        self._rows.append(values)

    def take_table(self, rows: int | None = None) -> pa.Table:
        """The first ``rows`` rows (all by default) as a table, in the order appended, removed from
        the buffer."""
        taken = self._rows[:rows]
        del self._rows[:rows]
        schema = self.schema.schema
        columns = list(zip(*taken)) or [()] * len(schema)
        return pa.Table.from_arrays([pa.array(values, type=field.type) for values, field in zip(columns, schema)],
                                    schema=schema)
