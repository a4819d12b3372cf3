"""Stream entries as Parquet rows: one schema per source (docs/delivery.md, "Parquet schema").

Every file has the common columns; a source weir knows adds its routing fields as typed columns;
any other field of an entry goes into ``extra`` (a map of strings). Pure: no file I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs
import pyarrow as pa

from weir.deliver.decisions import parse_entry_id


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

    @classmethod
    def of(cls, source: str) -> SourceSchema:
        routing = tuple(SOURCE_COLUMNS.get(source, ()))
        return cls(source, pa.schema([*COMMON, *routing, _EXTRA]), routing)

    def row(self, entry_id: str, fields: Mapping[bytes, bytes]) -> dict[str, object]:
        """The row of one entry.

        Raises:
            RowError: ``kind`` missing, ``ts`` not a finite number, or a typed column's value not
                of its type (say a ``fid`` that is not a decimal uint64).
        """
        try:
            position, sub = parse_entry_id(entry_id)
        except ValueError as exc:
            raise RowError(str(exc)) from None
        kind = fields.get(b"kind")
        if kind is None:
            raise RowError(f"entry {entry_id} has no kind field")
        row: dict[str, object] = {
            "stream_id": entry_id, "position": position, "sub": sub, "kind": _text(kind),
            "key": fields.get(b"key"), "ts": _timestamp(entry_id, fields.get(b"ts")), "data": fields.get(b"data"),
        }
        typed = set()
        for column in self.routing:
            raw = fields.get(column.name.encode())
            typed.add(column.name)
            row[column.name] = None if raw is None else _typed(entry_id, column, raw)
        extra = [(_text(name), _text(value)) for name, value in fields.items()
                 if _text(name) not in _BUILT_IN and _text(name) not in typed]
        row["extra"] = extra or None
        return row


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


def _typed(entry_id: str, column: pa.Field, raw: bytes) -> object:
    if pa.types.is_uint64(column.type):
        if not (raw.isdigit() and int(raw) <= _UINT64_MAX):
            raise RowError(f"entry {entry_id}: {column.name} {raw[:40]!r} is not a uint64")
        return int(raw)
    return _text(raw)


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


class RowBuffer:
    """Rows of one file held column by column until they are written as a row group."""

    def __init__(self, schema: SourceSchema) -> None:
        self.schema = schema
        self._columns: dict[str, list[object]] = {field.name: [] for field in schema.schema}

    def __len__(self) -> int:
        return len(self._columns["stream_id"])

    def append(self, row: Mapping[str, object]) -> None:
        for name, values in self._columns.items():
            values.append(row[name])

    def take_table(self, rows: int | None = None) -> pa.Table:
        """The first ``rows`` rows (all by default) as a table, in the order appended, removed from
        the buffer."""
        table = pa.table({name: pa.array(values[:rows], type=self.schema.schema.field(name).type)
                          for name, values in self._columns.items()}, schema=self.schema.schema)
        for values in self._columns.values():
            del values[:rows]
        return table
