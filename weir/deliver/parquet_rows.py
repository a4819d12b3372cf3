"""Stream entries as Parquet rows: one schema per source (docs/delivery.md, "Parquet schema").

Every file has the common columns; a source weir knows adds its routing fields as typed columns;
any other field of an entry goes into ``extra`` (a map of strings). Pure: no file I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import pyarrow as pa

from weir.deliver.entry_fields import ROUTING, UINT64, EntryError, decode_entry

RowError = EntryError  # the entry cannot become a row (the name parquet.py and its tests know)

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

# The routing fields weir writes per source (weir/deliver/entry_fields.py) as typed columns.
SOURCE_COLUMNS: dict[str, list[pa.Field]] = {
    source: [pa.field(name, pa.uint64() if kind == UINT64 else pa.string()) for name, kind in fields]
    for source, fields in ROUTING.items()
}


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
        """The row of one entry (weir.deliver.entry_fields.decode_entry: a column per value).

        Raises:
            RowError: ``kind`` missing, ``ts`` not a finite number, or a typed column's value not
                of its type (say a ``fid`` that is not a decimal uint64).
        """
        return decode_entry(self.source, entry_id, fields)


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
