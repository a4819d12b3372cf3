"""Stream entries as Parquet rows: one schema per source (docs/delivery.md, "Parquet schema").

Every file has the common columns; a source weir knows adds its routing fields as typed columns;
any other field of an entry goes into ``extra`` (a map of strings). Pure: no file I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs
import pyarrow as pa

from weir.deliver.decisions import hour_of
from weir.deliver.entry_fields import ROUTING, UINT64, EntryError, columns_of, decode_entry, entry_values, seconds_of

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
        schema = cls(source, pa.schema([*COMMON, *routing, _EXTRA]), routing)
        assert tuple(schema.schema.names) == columns_of(source)  # entry_values fills it in this order
        return schema

    def row(self, entry_id: str, fields: Mapping[bytes, bytes]) -> dict[str, object]:
        """The row of one entry, by column name (entry_fields.decode_entry: a column per value)."""
        return decode_entry(self.source, entry_id, fields)

    def values(self, entry_id: str, fields: Mapping[bytes, bytes]) -> tuple[object, ...]:
        """The row of one entry, its values in the schema's column order (the hot path: one
        tuple per entry, turned into columns a row group at a time by RowBuffer).

        Raises:
            RowError: ``kind`` missing, ``ts`` not a finite number, or a typed column's value not
                of its type (say a ``fid`` that is not a decimal uint64).
        """
        return entry_values(self.source, entry_id, fields)


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
