"""The Parquet target: files per source / partition / hour, each entry in exactly one committed file.

Layout (Hive-style, so DuckDB and pyarrow datasets read the path parts as columns)::

    <directory>/source=<source>/partition=<partition>/hour=<YYYY-MM-DDTHH>/part-<first>_<last>-<consumer>.parquet

``first`` / ``last`` are the lowest and highest stream ids in the file (also in the footer's
key-value metadata, ``weir.first_id`` / ``weir.last_id``, with ``weir.rows``). Commit protocol: rows
are written to ``.part-<consumer>-<pid>-<random>-<n>.parquet.tmp`` in the hour's directory (locked with flock while
open), the file is closed and fsynced, renamed to its final name, the directory fsynced; only then
does the core acknowledge the entries. An entry read again after a crash is looked up in the
committed files of its hour and acknowledged without being written twice.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import re
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Sequence
from pathlib import Path

import attrs
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import trio

from weir.deliver.decisions import RollPolicy, SortedIds, parse_entry_id
from weir.deliver.group import Entry
from weir.deliver.parquet_rows import RowBuffer, RowError, SourceSchema, hours_of
from weir.deliver.target import Prepared

log = logging.getLogger("weir.deliver.parquet")

COMMITTED_NAME = re.compile(r"part-(\d+-\d+)_(\d+-\d+)-.+\.parquet\Z")
_TEMP_SUFFIX = ".parquet.tmp"
# Columns whose values are (nearly) all distinct: a dictionary page is only work lost for them
# (pyarrow tries one, then falls back to plain); every other column is dictionary-encoded.
_PLAIN_COLUMNS = frozenset({"stream_id", "position", "sub", "key", "ts", "data"})
# Stream ids of recently read committed files are kept for lookups, up to this many in all (as Arrow
# string arrays: ~20 bytes an id, where a Python set of str would take ~100).
_CACHED_IDS = 4_000_000


@attrs.define(eq=False)
class _OpenFile:
    hour: str
    temp: Path
    lock_fd: int
    buffer: RowBuffer
    opened_at: float
    entry_ids: list[str] = attrs.field(factory=list)
    writer: pq.ParquetWriter | None = None
    writing: Future[None] | None = None  # the row group being written in the background, if any


class ParquetTarget:
    """One partition's Parquet files (see the module docstring); implements weir.deliver.target.Target.

    Args:
        directory: the root of every pipeline's files.
        compression: zstd, snappy, gzip or none.
        row_group_rows: rows buffered before they are written as one row group.
        roll: when a file is committed (rows, age).
        clock: ``trio.current_time`` (tests may pass another).
    """

    def __init__(self, *, directory: Path, source: str, partition: str, consumer: str, compression: str,
                 row_group_rows: int, roll: RollPolicy, clock=trio.current_time) -> None:
        self.schema = SourceSchema.of(source)
        self.partition_dir = Path(directory) / f"source={source}" / f"partition={partition}"
        self.source = source
        self.partition = partition
        self.consumer = re.sub(r"[^A-Za-z0-9._-]", "_", consumer)
        self.compression = compression
        self.row_group_rows = row_group_rows
        self.roll = roll
        self._clock = clock
        self._open: dict[str, _OpenFile] = {}
        self._serial = itertools.count()
        self._token = os.urandom(4).hex()
        self._given_back: list[str] = []  # entries no file could take (a full disk), for given_back()
        self._committed_ids: OrderedDict[Path, pa.Array] = OrderedDict()
        self._cached_ids = 0
        self._spans: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
        # Row groups are encoded, compressed and written here while the next entries are read
        # (pyarrow releases the GIL): one at a time, so at most one row group waits in memory.
        self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weir-parquet")
        self._dictionary = [name for name in self.schema.schema.names if name not in _PLAIN_COLUMNS]

    # -- recovery ------------------------------------------------------------------------

    async def recover(self) -> None:
        await trio.to_thread.run_sync(self._remove_abandoned)

    def _remove_abandoned(self) -> None:
        """Delete temporary files nobody holds (their writer died); nothing in them was acknowledged."""
        self.partition_dir.mkdir(parents=True, exist_ok=True)
        for temp in self.partition_dir.glob(f"hour=*/.part-*{_TEMP_SUFFIX}"):
            try:
                fd = os.open(temp, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another instance is writing it
            else:
                temp.unlink(missing_ok=True)
                log.info("removed abandoned temporary file %s", temp,
                         extra={"event": "deliver_temp_removed", "path": str(temp)})
            finally:
                os.close(fd)

    async def already_delivered(self, entries: Sequence[Entry]) -> set[str]:
        by_hour: dict[str, list[str]] = {}
        for entry, hour in zip(entries, hours_of(entry.fields for entry in entries)):
            by_hour.setdefault(hour, []).append(entry.entry_id)
        return await trio.to_thread.run_sync(self._find_committed, by_hour)

    def _find_committed(self, by_hour: dict[str, list[str]]) -> set[str]:
        """Runs on every batch: one directory listing per hour, a bisection per committed file, and
        a file's stream ids are read only when one of the entries falls inside its range."""
        found: set[str] = set()
        for hour, entry_ids in by_hour.items():
            hour_dir = self.partition_dir / f"hour={hour}"
            try:
                names = os.listdir(hour_dir)
            except FileNotFoundError:
                continue
            candidates = SortedIds(entry_ids)
            for name in names:
                span = self._span_of(name)
                inside = candidates.between(*span) if span is not None else None
                if inside:
                    present = pc.is_in(pa.array(inside, pa.string()), value_set=self._ids_in(hour_dir / name))
                    found.update(entry_id for entry_id, hit in zip(inside, present.to_pylist()) if hit)
        return found

    def _span_of(self, name: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """The id range a committed file's name carries (None: not a committed file)."""
        span = self._spans.get(name)
        if span is None:
            match = COMMITTED_NAME.match(name)
            if match is None:
                return None
            span = self._spans[name] = (parse_entry_id(match[1]), parse_entry_id(match[2]))
            if len(self._spans) > 100_000:  # bounded: names of files long past are dropped
                self._spans.clear()
        return span

    def _ids_in(self, path: Path) -> pa.Array:
        ids = self._committed_ids.get(path)
        if ids is None:
            try:
                ids = pq.read_table(path, columns=["stream_id"]).column("stream_id").combine_chunks()
            except FileNotFoundError:  # moved away since the listing: it holds nothing here
                return pa.array([], pa.string())
            except pa.ArrowException as exc:  # not a Parquet file, or not one with weir's stream_id
                ids = self._unreadable(path, repr(exc))
            else:
                if ids.type != pa.string():
                    ids = self._unreadable(path, f"its stream_id column is {ids.type}, not string")
            self._remember_ids(path, ids)
        else:
            self._committed_ids.move_to_end(path)
        return ids

    def _unreadable(self, path: Path, why: str) -> pa.Array:
        """A file named like a committed one that is not weir's (a damaged copy, a foreign file):
        it proves no entry delivered, so its range is written again rather than the partition
        stalling on it; said once (its empty id set is cached like any file's ids)."""
        log.warning("%s is named like a committed file but cannot be read as one (%s): the entries of its range "
                    "are delivered to files of their own; move it away", path, why,
                    extra={"event": "deliver_unreadable_file", "path": str(path), "error": why})
        return pa.array([], pa.string())

    def _remember_ids(self, path: Path, ids: pa.Array) -> None:
        self._committed_ids[path] = ids
        self._cached_ids += len(ids)
        while self._cached_ids > _CACHED_IDS and len(self._committed_ids) > 1:
            _, dropped = self._committed_ids.popitem(last=False)
            self._cached_ids -= len(dropped)

    # -- writing -------------------------------------------------------------------------

    async def offer(self, entries: Sequence[Entry]) -> dict[str, str]:
        refused: dict[str, str] = {}
        full: list[_OpenFile] = []
        unwritable: dict[str, tuple[OSError, list[str]]] = {}  # hours whose file could not be created
        for entry, hour in zip(entries, hours_of(entry.fields for entry in entries)):
            try:
                row = self.schema.values(entry.entry_id, entry.fields)
            except RowError as exc:
                refused[entry.entry_id] = str(exc)
                continue
            file = self._open.get(hour)
            if file is None and hour in unwritable:
                unwritable[hour][1].append(entry.entry_id)
                continue
            if file is None:
                try:
                    file = self._open[hour] = await trio.to_thread.run_sync(self._new_file, hour, self._clock())
                except OSError as exc:  # a full or read-only disk: the hour's entries wait, pending
                    unwritable[hour] = (exc, [entry.entry_id])
                    continue
            file.buffer.append(row)
            file.entry_ids.append(entry.entry_id)
            if len(file.buffer) >= self.row_group_rows:
                full.append(file)
        for hour, (exc, entry_ids) in unwritable.items():
            self._cannot_write(self.partition_dir / f"hour={hour}", exc, entry_ids)
        for file in dict.fromkeys(full):
            try:
                await self._write_row_groups(file)
            except OSError as exc:
                await self._drop(file, exc)
        return refused

    async def _drop(self, file: _OpenFile, exc: OSError) -> None:
        """A file that cannot be written (a full disk): deleted, its entries given back."""
        del self._open[file.hour]
        await trio.to_thread.run_sync(_discard, file)
        self._cannot_write(file.temp, exc, file.entry_ids)

    def _cannot_write(self, path: Path, exc: OSError, entry_ids: list[str]) -> None:
        """Entries left pending, not crashed on: a restart would read them again, and each read
        counts as a delivery towards the dead-letter stream; a claim pass brings them back after
        claim_idle instead (the core: given_back)."""
        self._given_back += entry_ids
        log.warning("cannot write %s (%s): %d entries left pending, delivered again after claim_idle", path, exc,
                    len(entry_ids), extra={"event": "deliver_write_failed", "path": str(path), "error": str(exc),
                                           "entries": len(entry_ids)})

    def _new_file(self, hour: str, opened_at: float) -> _OpenFile:
        hour_dir = self.partition_dir / f"hour={hour}"
        hour_dir.mkdir(parents=True, exist_ok=True)
        # The token: two instances under one consumer name (a fixed --consumer scaled to two
        # replicas, both pid 1 in their containers) must not pick the same name; O_EXCL: never
        # truncate a file another writer has open.
        temp = hour_dir / f".part-{self.consumer}-{os.getpid()}-{self._token}-{next(self._serial)}{_TEMP_SUFFIX}"
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new name: nobody else can hold it
        return _OpenFile(hour=hour, temp=temp, lock_fd=fd, buffer=RowBuffer(self.schema), opened_at=opened_at)

    async def _write_row_groups(self, file: _OpenFile) -> None:
        """Hand the buffered full row groups to the writer thread, after the previous one is done."""
        while len(file.buffer) >= self.row_group_rows:
            await _finished(file)
            table = file.buffer.take_table(self.row_group_rows)  # here: it reads the buffer trio appends to
            file.writing = self._writer_thread.submit(self._write_table, file, table)

    def _write_table(self, file: _OpenFile, table: pa.Table) -> None:
        if file.writer is None:
            file.writer = pq.ParquetWriter(file.temp, self.schema.schema, compression=self.compression,
                                           use_dictionary=self._dictionary)
        file.writer.write_table(table, row_group_size=len(table))

    def given_back(self) -> list[str]:
        given_back, self._given_back = self._given_back, []
        return given_back

    def next_due(self) -> float | None:
        if not self._open:
            return None
        return min(self.roll.due_at(file.opened_at) for file in self._open.values())

    async def prepare(self, now: float, *, everything: bool = False) -> list[Prepared]:
        due = [file for file in self._open.values()
               if everything or self.roll.due(rows=len(file.entry_ids), opened_at=file.opened_at, now=now)]
        prepared = []
        for file in due:
            try:
                await _finished(file)  # before it leaves _open: if its write failed, aclose still drops it
                await trio.to_thread.run_sync(self._close_file, file)
            except OSError as exc:
                await self._drop(file, exc)
                continue
            del self._open[file.hour]
            prepared.append(Prepared(entry_ids=tuple(file.entry_ids), handle=file))
        return prepared

    def _close_file(self, file: _OpenFile) -> None:
        if len(file.buffer):  # the file's last, possibly smaller, row group
            self._write_table(file, file.buffer.take_table())
        assert file.writer is not None  # a file is opened for its first row
        ordered = sorted(file.entry_ids, key=parse_entry_id)
        file.writer.add_key_value_metadata({
            "weir.source": self.source, "weir.partition": self.partition, "weir.first_id": ordered[0],
            "weir.last_id": ordered[-1], "weir.rows": str(len(ordered)),
        })
        file.writer.close()
        with open(file.temp, "rb") as handle:
            os.fsync(handle.fileno())

    async def commit(self, prepared: Prepared) -> None:
        await trio.to_thread.run_sync(self._commit_file, prepared.handle)

    def _commit_file(self, file: _OpenFile) -> None:
        ordered = sorted(file.entry_ids, key=parse_entry_id)
        final = file.temp.with_name(f"part-{ordered[0]}_{ordered[-1]}-{self.consumer}.parquet")
        os.rename(file.temp, final)
        for directory in (final.parent, final.parent.parent):  # the new name, and a new hour directory
            _fsync_dir(directory)
        os.close(file.lock_fd)
        self._remember_ids(final, pa.array(ordered, pa.string()))
        log.debug("committed %s (%d rows)", final, len(ordered),
                  extra={"event": "deliver_file_committed", "path": str(final), "rows": len(ordered)})

    async def abort(self, prepared: Prepared) -> None:
        await trio.to_thread.run_sync(_discard, prepared.handle)

    async def aclose(self) -> None:
        files, self._open = list(self._open.values()), {}
        for file in files:
            await trio.to_thread.run_sync(_discard, file)
        self._writer_thread.shutdown(wait=False)  # nothing is queued: each file's write was waited for


async def _finished(file: _OpenFile) -> None:
    """Wait for the file's background row group write; its error (a full disk) is raised here."""
    if file.writing is not None:
        await trio.to_thread.run_sync(file.writing.result)
        file.writing = None  # only now: a cancel before this leaves it for _discard to wait for


def _discard(file: _OpenFile) -> None:
    if file.writing is not None:  # the writer is not closed under a write still running
        try:
            file.writing.result()
        except Exception:  # the file is deleted anyway
            pass
    if file.writer is not None:
        try:
            file.writer.close()
        except Exception:  # already closed, or failed half-way: the file is deleted anyway
            pass
    file.temp.unlink(missing_ok=True)
    try:
        os.close(file.lock_fd)
    except OSError:
        pass


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
