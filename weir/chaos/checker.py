"""The checker: after a run and a full drain, compare what Redis holds with what the network offered.

Jepsen's vocabulary (shared/notes/reliability.md), per partition — every count must be zero:

- **lost**: offered but in neither the events stream nor the dead-letter stream;
- **unexpected**: present but never offered;
- **duplicated**: an offered event present more than once (under any entry id);
- **out_of_order**: an entry whose event was offered *before* an entry ahead of it;
- **wrong_id**: an entry whose id is not ``<event id>-0``;
- **cursor_regressions**: the persisted cursor, sampled during the run, went down (except around
  a Redis rollback, where Redis itself goes back and weir must write the lost events again).

During the run a :class:`RunSampler` polls Redis (stream lengths and cursors, every few ms,
directly — not through a proxy) and the weir process's VmRSS; from those samples and the
schedule's :class:`~weir.chaos.schedule.FaultRecord` s it measures, per fault, the recovery time
(fault cleared → the stream first holds more than it did as the fault cleared; after a rollback:
more than before Redis lost its writes), the rates during and after it, how much weir's
resident memory grew (:func:`rss_growth`) and which supervisors restarted a child meanwhile (the
``restart`` events of weir's JSON log, :func:`supervision_from_log`).

A fault's *span*, for memory and restarts: from when it was applied until ``window`` s after it
cleared, or until its recovery if that is later — what the fault causes happens during it or
while weir recovers from it.

The checker knows no network: a source (:mod:`weir.chaos.source`) says what it offered, per
partition, as :data:`OfferedEvent` s in the order the stream must hold them — ``(position, data)``
or ``(position, sub, data)``, the entry id being ``<position>-<sub>`` — and which cursor a full
drain leaves (default: the last event's position). Positions are whatever the source counts in
(a Snapchain event id, a firehose seq, a Jetstream ``time_us``, an Ethereum sequence number);
the checker only compares them.

The comparison and the measurements are pure functions of lists (tested without Redis); only
:class:`RespClient`, :class:`RunSampler` and :func:`check_run` do I/O.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import Any, Self
from urllib.parse import urlsplit

import attrs
import trio

from weir.chaos.schedule import FaultRecord
from weir.sinks.keys import partition_keys

__all__ = [
    "FaultReport",
    "OfferedEvent",
    "PartitionReport",
    "RespClient",
    "RespError",
    "RssGrowth",
    "RunReport",
    "RunSampler",
    "Sample",
    "SupervisionLogEntry",
    "check_run",
    "compare_chain",
    "compare_partition",
    "count_by_level",
    "cursor_regressions",
    "fault_report",
    "format_restarts",
    "offered_position",
    "read_rss_kb",
    "restarts_from_log",
    "restarts_in_span",
    "rss_growth",
    "supervision_from_log",
    "supervisor_level",
]

log = logging.getLogger("weir.chaos.checker")

Entry = tuple[bytes, Mapping[bytes, bytes]]  # (entry id, fields), as XRANGE returns them
#: One offered event as the stream must hold it: ``(position, data)`` (sub 0) or ``(position, sub, data)``.
OfferedEvent = tuple[int, bytes] | tuple[int, int, bytes]


def offered_position(event: OfferedEvent) -> tuple[int, int]:
    """The ``(position, sub)`` an offered event's entry id must carry."""
    return (event[0], 0) if len(event) == 2 else (event[0], event[1])  # type: ignore[misc]


def _offered_data(event: OfferedEvent) -> bytes:
    return event[-1]  # type: ignore[return-value]


# -- a minimal Redis client on trio ---------------------------------------------------------------


class RespError(Exception):
    """Redis answered with an error reply."""


class RespClient:
    """Just enough RESP2 over a trio socket for the checker: commands, pipelines, XRANGE paging.

    Independent of the asyncio bridge, so it samples Redis while weir runs in another process too,
    and a sample can be cut short by trio cancellation (the connection is then dropped).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._stream: trio.SocketStream | None = None
        self._buffer = bytearray()

    @classmethod
    def from_url(cls, url: str) -> RespClient:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379)

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        self._buffer.clear()
        if stream is not None:
            await stream.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def command(self, *args: Any) -> Any:
        (reply,) = await self.pipeline([args])
        if isinstance(reply, RespError):
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``commands`` in one write; return their replies (error replies as :class:`RespError`)."""
        if self._stream is None:
            self._stream = await trio.open_tcp_stream(self.host, self.port)
        try:
            await self._stream.send_all(b"".join(_encode(c) for c in commands))
            return [await self._reply() for _ in commands]
        except BaseException:
            # cancelled or broken mid-reply: the connection's state is unknown, drop it
            with trio.CancelScope(shield=True):
                await self.aclose()
            raise

    async def xrange_all(self, key: str, page: int = 2000) -> list[Entry]:
        entries: list[Entry] = []
        start = "-"
        while True:
            batch = await self.command("XRANGE", key, start, "+", "COUNT", page)
            entries.extend((entry_id, _pairs(fields)) for entry_id, fields in batch)
            if len(batch) < page:
                return entries
            start = "(" + batch[-1][0].decode()

    async def _line(self) -> bytes:
        assert self._stream is not None
        while (end := self._buffer.find(b"\r\n")) < 0:
            await self._fill()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    async def _fill(self) -> None:
        assert self._stream is not None
        data = await self._stream.receive_some(65536)
        if not data:
            raise trio.BrokenResourceError("Redis closed the connection")
        self._buffer += data

    async def _reply(self) -> Any:
        line = await self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            while len(self._buffer) < size + 2:
                await self._fill()
            data = bytes(self._buffer[:size])
            del self._buffer[: size + 2]
            return data
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [await self._reply() for _ in range(size)]
        raise RespError(f"unexpected reply {line[:40]!r}")


def _encode(args: Sequence[Any]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


# -- sampling during the run ----------------------------------------------------------------------


@attrs.frozen
class Sample:
    """One poll: trio time, per partition the stream length and cursor (None: no key yet), weir's
    RSS and the pid it was read from (None: weir not running or not sampled)."""

    at: float
    lengths: tuple[int, ...]
    cursors: tuple[int | None, ...]
    rss_kb: int | None
    pid: int | None = None

    @property
    def persisted(self) -> int:
        return sum(self.lengths)


def read_rss_kb(pid: int) -> int | None:
    """VmRSS of ``pid`` in kB (None if it is not running)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@attrs.define(eq=False)
class RunSampler:
    """Polls Redis every ``interval`` s (stream length and cursor of each partition) and weir's RSS.

    ``pid`` is a function so a restarted weir process is followed; None samples no RSS. A poll
    that fails or takes longer than ``poll_timeout`` (Redis killed or frozen) is skipped.
    """

    redis_url: str
    partitions: Sequence[str]
    pid: Callable[[], int | None] | None = None
    interval: float = 0.005
    poll_timeout: float = 0.2
    prefix: str = "weir"
    source: str = "farcaster"
    samples: list[Sample] = attrs.Factory(list)
    failed_polls: int = 0

    async def run(self, *, task_status: trio.TaskStatus[RunSampler] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample until cancelled (takes the first sample before reporting started)."""
        keys = [partition_keys(self.source, p, prefix=self.prefix) for p in self.partitions]
        commands: list[tuple[str, ...]] = []
        for k in keys:
            commands += [("XLEN", k.events), ("HGET", k.cursor, "position")]
        client = RespClient.from_url(self.redis_url)
        started = False
        try:
            while True:
                await self.poll(client, commands)
                if not started:
                    task_status.started(self)
                    started = True
                await trio.sleep(self.interval)
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()

    async def poll(self, client: RespClient, commands: Sequence[Sequence[str]]) -> Sample | None:
        replies = None
        with trio.move_on_after(self.poll_timeout):
            try:
                replies = await client.pipeline(commands)
            except (OSError, trio.BrokenResourceError, RespError):
                pass
        if replies is None or any(isinstance(r, RespError) for r in replies):
            self.failed_polls += 1
            return None
        pid = self.pid() if self.pid is not None else None
        rss = read_rss_kb(pid) if pid else None
        sample = Sample(
            at=trio.current_time(),
            lengths=tuple(int(r) for r in replies[0::2]),
            cursors=tuple(None if r is None else int(r) for r in replies[1::2]),
            rss_kb=rss,
            pid=pid if rss is not None else None,
        )
        self.samples.append(sample)
        return sample


# -- reports --------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class PartitionReport:
    """The comparison of one partition (every count but ``offered``/``persisted``/``dead`` must be 0).

    Attributes:
        partition: e.g. ``"1"``.
        offered: events the network offered.
        persisted: entries in the events stream.
        dead: offered events found in the dead-letter stream instead (malformed data).
        lost, unexpected, duplicated, out_of_order, wrong_id: see the module docstring.
        cursor_regressions: times a sampled cursor was below the previous sample.
        final_cursor: the cursor after the drain.
        cursor_mismatch: the final cursor is not the last offered event's id.
        spurious_retractions: for a chain (:func:`compare_chain`), retraction entries of blocks
            that are on the final canonical chain: weir took back something that never left it.
    """

    partition: str
    offered: int
    persisted: int
    dead: int = 0
    lost: int = 0
    unexpected: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    wrong_id: int = 0
    cursor_regressions: int = 0
    final_cursor: int | None = None
    cursor_mismatch: bool = False
    spurious_retractions: int = 0
    examples: tuple[str, ...] = ()  # a few concrete findings, for the failure message

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.unexpected or self.duplicated or self.out_of_order or self.wrong_id
            or self.cursor_regressions or self.cursor_mismatch or self.spurious_retractions
        )  # fmt: skip


@attrs.frozen(kw_only=True)
class FaultReport:
    """How weir fared through one fault.

    Attributes:
        fault: the fault, as :meth:`TimedFault.describe` prints it.
        applied_at, cleared_at: seconds from the first sample.
        recovery_s: fault cleared → first newly persisted event (None: nothing new was persisted
            afterwards — the network had nothing more to offer).
        rate_during: events/s persisted while the fault applied.
        rate_after: events/s persisted in the ``window`` seconds after it cleared.
        rss_before_kb, rss_peak_kb, rss_growth_kb: weir's RSS over the fault's span (see
            :class:`RssGrowth`; None: not sampled, or weir was not running when it began).
        restarts: restarts in the fault's span by supervisor name; ``"process"`` counts weir
            itself started again (a ``weir`` kill or term).
    """

    fault: str
    applied_at: float
    cleared_at: float | None
    recovery_s: float | None
    rate_during: float
    rate_after: float
    rss_before_kb: int | None = None
    rss_peak_kb: int | None = None
    rss_growth_kb: int | None = None
    restarts: Mapping[str, int] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class RunReport:
    """Everything a chaos run measured; ``ok`` is the verdict, ``table_row()`` its summary line.

    Attributes:
        name: the scenario.
        partitions: one :class:`PartitionReport` each.
        faults: one :class:`FaultReport` per applied fault.
        restarts: supervisor restarts plus process restarts during the run.
        restarts_by_supervisor: the same, by supervisor name (``"root"``, ``"farcaster/1"``, …;
            ``"process"``: weir itself started again). Empty when only the total is known.
        escalations_by_supervisor: supervisors that gave up (exceeded their restart intensity).
        reconnects: source reconnections (dropped streams, resets) during the run.
        duration_s: from the first to the last sample.
        rss_first_kb, rss_peak_kb, rss_last_kb: weir's resident memory (None: not sampled).
        samples: how many polls succeeded.
        schedule: the schedule's JSON line (replay it with ``Schedule.from_json``).
    """

    name: str
    partitions: tuple[PartitionReport, ...]
    faults: tuple[FaultReport, ...] = ()
    restarts: int = 0
    restarts_by_supervisor: Mapping[str, int] = attrs.field(factory=dict)
    escalations_by_supervisor: Mapping[str, int] = attrs.field(factory=dict)
    reconnects: int = 0
    duration_s: float = 0.0
    rss_first_kb: int | None = None
    rss_peak_kb: int | None = None
    rss_last_kb: int | None = None
    samples: int = 0
    schedule: str = ""

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.partitions)

    def _sum(self, field: str) -> int:
        return sum(getattr(p, field) for p in self.partitions)

    @property
    def offered(self) -> int:
        return self._sum("offered")

    @property
    def persisted(self) -> int:
        return self._sum("persisted")

    @property
    def lost(self) -> int:
        return self._sum("lost")

    @property
    def duplicated(self) -> int:
        return self._sum("duplicated")

    @property
    def unexpected(self) -> int:
        return self._sum("unexpected")

    @property
    def out_of_order(self) -> int:
        return self._sum("out_of_order")

    @property
    def cursor_regressions(self) -> int:
        return self._sum("cursor_regressions")

    @property
    def recovery_max_s(self) -> float | None:
        times = [f.recovery_s for f in self.faults if f.recovery_s is not None]
        return max(times) if times else None

    @property
    def restarts_by_level(self) -> dict[str, int]:
        """Restarts by supervisor level (``process``, ``root``, ``pipeline``)."""
        return count_by_level(self.restarts_by_supervisor)

    @property
    def restarts_cell(self) -> str:
        """The table's restarts column: the total, and by level when known, e.g. ``3 (pipeline 3)``."""
        return format_restarts(self.restarts, self.restarts_by_level)

    @property
    def rss_growth_max_kb(self) -> int | None:
        """The largest RSS growth over any fault's span (None: none measured)."""
        growth = [f.rss_growth_kb for f in self.faults if f.rss_growth_kb is not None]
        return max(growth) if growth else None

    @staticmethod
    def table_header() -> str:
        return (
            "| scenario | offered | persisted | lost | dup | order | unexpected | cursor ↓ | "
            "max recovery | restarts | reconnects | peak RSS | verdict |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        )

    def table_row(self) -> str:
        recovery = "–" if self.recovery_max_s is None else f"{self.recovery_max_s * 1000:.0f} ms"
        rss = "–" if self.rss_peak_kb is None else f"{self.rss_peak_kb / 1024:.0f} MiB"
        return (
            f"| {self.name} | {self.offered} | {self.persisted} | {self.lost} | {self.duplicated} | "
            f"{self.out_of_order} | {self.unexpected} | {self.cursor_regressions} | {recovery} | "
            f"{self.restarts_cell} | {self.reconnects} | {rss} | {'ok' if self.ok else 'FAIL'} |"
        )

    def summary(self) -> str:
        """A multi-line account, for logs and assertion messages."""
        lines = [self.table_header(), self.table_row()]
        for p in self.partitions:
            status = "ok" if p.ok else "FAIL"
            lines.append(
                f"partition {p.partition}: {status} offered={p.offered} persisted={p.persisted} dead={p.dead} "
                f"lost={p.lost} unexpected={p.unexpected} duplicated={p.duplicated} out_of_order={p.out_of_order} "
                f"wrong_id={p.wrong_id} cursor_regressions={p.cursor_regressions} final_cursor={p.final_cursor}"
                + (f" spurious_retractions={p.spurious_retractions}" if p.spurious_retractions else "")
                + (f" examples={list(p.examples)}" if p.examples else "")
            )
        if self.restarts_by_supervisor:
            lines.append("restarts by supervisor: " + _counts(self.restarts_by_supervisor))
        if self.escalations_by_supervisor:
            lines.append("escalations by supervisor: " + _counts(self.escalations_by_supervisor))
        for f in self.faults:
            recovery = "none" if f.recovery_s is None else f"{f.recovery_s * 1000:.0f} ms"
            lines.append(
                f"fault {f.fault}: recovery {recovery}, {f.rate_during:.0f} ev/s during, {f.rate_after:.0f} ev/s after, "
                f"RSS {describe_rss(f.rss_before_kb, f.rss_peak_kb, f.rss_growth_kb)}, "
                f"restarts {_counts(f.restarts) or 'none'}"
            )
        if self.schedule:
            lines.append(f"schedule: {self.schedule}")
        return "\n".join(lines)


# -- pure analysis --------------------------------------------------------------------------------


def _position(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def compare_partition(
    partition: str,
    offered: Sequence[OfferedEvent],
    entries: Sequence[Entry],
    *,
    dead: Sequence[Entry] = (),
    cursors: Iterable[int | None] = (),
    final_cursor: int | None = None,
    expected_cursor: int | None = None,
    rolled_back: Container[int] = (),
) -> PartitionReport:
    """Compare one partition's stream (and dead letters) with what was offered, in order.

    An entry is identified by its ``data`` (the source makes each offered event's data unique: a
    HubEvent's bytes include its id, so equal bytes are the same event); its id must be the offered
    event's ``<position>-<sub>``. ``cursors`` are the cursor samples taken during the run, in time
    order; ``rolled_back`` the indexes of samples taken around a Redis rollback, where the cursor
    going down is Redis's doing (the fault), not weir's. ``expected_cursor``: the cursor a full
    drain leaves (default: the last offered event's position).
    """
    index = {_offered_data(event): i for i, event in enumerate(offered)}
    seen = [0] * len(offered)
    unexpected = wrong_id = out_of_order = duplicated = 0
    examples: list[str] = []
    highest = -1
    for entry_id, fields in entries:
        i = index.get(fields.get(b"data", b""))
        if i is None:
            unexpected += 1
            examples.append(f"unexpected entry {entry_id.decode()}")
            continue
        seen[i] += 1
        if seen[i] > 1:
            duplicated += 1
            examples.append(f"event {offered[i][0]} again at {entry_id.decode()}")
            continue
        if _position(entry_id) != offered_position(offered[i]):
            wrong_id += 1
            examples.append(f"event {offered[i][0]} stored as {entry_id.decode()}")
        if i < highest:
            out_of_order += 1
            examples.append(f"event {offered[i][0]} after event {offered[highest][0]}")
        highest = max(highest, i)
    dead_count = 0
    for _, fields in dead:
        i = index.get(fields.get(b"data", b""))
        if i is not None and seen[i] == 0:
            seen[i] = 1
            dead_count += 1
    missing = [offered[i][0] for i, n in enumerate(seen) if n == 0]
    examples += [f"event {id_} lost" for id_ in missing[:3]]
    regressions = cursor_regressions(cursors, rolled_back=rolled_back)
    if expected_cursor is None and offered:
        expected_cursor = offered[-1][0]
    return PartitionReport(
        partition=partition,
        offered=len(offered),
        persisted=len(entries),
        dead=dead_count,
        lost=len(missing),
        unexpected=unexpected,
        duplicated=duplicated,
        out_of_order=out_of_order,
        wrong_id=wrong_id,
        cursor_regressions=regressions,
        final_cursor=final_cursor,
        cursor_mismatch=final_cursor != expected_cursor,
        examples=tuple(examples[:8]),
    )


def compare_chain(
    partition: str,
    canonical: Sequence[bytes],
    canonical_blocks: Container[str],
    entries: Sequence[Entry],
    *,
    dead: Sequence[Entry] = (),
    cursors: Iterable[int | None] = (),
    final_cursor: int | None = None,
    final_token: str | None = None,
    expected_token: str | None = None,
    rolled_back: Container[int] = (),
) -> PartitionReport:
    """Compare a chain's stream (``log`` and ``retract`` entries) with the final canonical chain.

    A chain's stream cannot be known in advance (what weir retracts depends on what it saw before a
    reorg), so it is replayed: a ``log`` entry adds its key (``chain:block_hash:log_index``), a
    ``retract`` entry removes it. Then **lost**: a ``canonical`` log key not held at the end (nor
    dead-lettered); **unexpected**: a held key that is not canonical; **duplicated**: a ``log``
    entry for a key already held; **out_of_order**: a ``retract`` of a key not held, or entry ids
    that do not increase; **spurious_retractions**: a ``retract`` of a block in
    ``canonical_blocks`` (hashes of the final canonical chain); **cursor_mismatch**: the cursor's
    token (``number:hash``) is not ``expected_token`` (the final head's).
    """
    wanted = set(canonical)
    held: set[bytes] = set()
    duplicated = out_of_order = spurious = 0
    examples: list[str] = []
    last_id = (-1, -1)
    for entry_id, fields in entries:
        position = _position(entry_id)
        if position <= last_id:
            out_of_order += 1
            examples.append(f"entry {entry_id.decode()} after {last_id}")
        last_id = max(last_id, position)
        key, kind = fields.get(b"key", b""), fields.get(b"kind", b"")
        if kind == b"retract":
            block = key.decode(errors="replace").split(":")[1] if key.count(b":") == 2 else ""
            if block in canonical_blocks:
                spurious += 1
                examples.append(f"retraction of canonical block {block} at {entry_id.decode()}")
            if key in held:
                held.remove(key)
            else:
                out_of_order += 1
                examples.append(f"retraction of {key.decode(errors='replace')}, not held, at {entry_id.decode()}")
        elif key in held:
            duplicated += 1
            examples.append(f"{key.decode(errors='replace')} again at {entry_id.decode()} without a retraction")
        else:
            held.add(key)
    dead_keys = {fields.get(b"key", b"") for _, fields in dead}
    missing = [key for key in canonical if key not in held and key not in dead_keys]
    unexpected = held - wanted
    examples += [f"log {key.decode(errors='replace')} lost" for key in missing[:3]]
    examples += [f"log {key.decode(errors='replace')} held, not canonical" for key in sorted(unexpected)[:3]]
    return PartitionReport(
        partition=partition,
        offered=len(wanted),
        persisted=len(entries),
        dead=len(wanted & dead_keys),
        lost=len(missing),
        unexpected=len(unexpected),
        duplicated=duplicated,
        out_of_order=out_of_order,
        cursor_regressions=cursor_regressions(cursors, rolled_back=rolled_back),
        final_cursor=final_cursor,
        cursor_mismatch=final_token != expected_token,
        spurious_retractions=spurious,
        examples=tuple(examples[:8]),
    )


def cursor_regressions(cursors: Iterable[int | None], *, rolled_back: Container[int] = ()) -> int:
    """How many times a cursor sample is below the previous one (a vanished cursor counts too),
    except at the indexes in ``rolled_back``."""
    values = [-1 if cursor is None else cursor for cursor in cursors]
    return sum(
        1 for i, (before, after) in enumerate(itertools.pairwise(values), start=1)
        if after < before and i not in rolled_back
    )  # fmt: skip


def fault_report(
    record: FaultRecord,
    samples: Sequence[Sample],
    *,
    origin: float,
    window: float = 1.0,
    supervision: Sequence[tuple[float, SupervisionLogEntry]] = (),
) -> FaultReport:
    """Recovery time, rates, RSS growth and restarts around one fault, from the run's samples.

    ``supervision``: the log's restart events placed on the trio clock (see :func:`check_run`).
    """
    applied, cleared = record.applied_at, record.cleared_at
    end = cleared
    recovery = None
    if cleared is not None:
        after_clear = [s for s in samples if s.at > cleared]
        # The most it held by then: after a Redis rollback, recovered means back above that.
        at_clear = max((s.persisted for s in samples if s.at <= cleared), default=0)
        recovery = next((s.at - cleared for s in after_clear if s.persisted > at_clear), None)
        end = cleared + max(window, recovery or 0.0)
    span_end = end if end is not None else (samples[-1].at if samples else applied)
    rss = rss_growth(samples, applied, span_end)
    restarts = restarts_in_span(supervision, applied, span_end)
    if process_restarted(record):
        restarts["process"] = restarts.get("process", 0) + 1
    common = dict(rss_before_kb=rss.before_kb, rss_peak_kb=rss.peak_kb, rss_growth_kb=rss.growth_kb, restarts=restarts)
    if cleared is None:
        return FaultReport(fault=record.fault.describe(), applied_at=applied - origin, cleared_at=None,
                           recovery_s=None, rate_during=0.0, rate_after=0.0, **common)  # fmt: skip
    return FaultReport(
        fault=record.fault.describe(),
        applied_at=applied - origin,
        cleared_at=cleared - origin,
        recovery_s=recovery,
        rate_during=_rate(samples, applied, cleared),
        rate_after=_rate(samples, cleared, cleared + window),
        **common,
    )


def rollback_samples(samples: Sequence[Sample], records: Sequence[FaultRecord], window: float) -> set[int]:
    """Indexes of the samples from each Redis rollback's start until ``window`` after it cleared:
    there the persisted cursor goes down because Redis lost writes (the fault itself)."""
    spans = [
        (r.applied_at, (r.cleared_at if r.cleared_at is not None else math.inf) + window)
        for r in records if r.fault.target == "redis" and r.fault.kind == "rollback"
    ]  # fmt: skip
    return {i for i, sample in enumerate(samples) if any(start <= sample.at <= end for start, end in spans)}


def process_restarted(record: FaultRecord) -> bool:
    """Whether the fault restarts weir's process (kill -9 or SIGTERM, started again as it clears)."""
    return record.fault.target == "weir" and record.fault.kind in ("kill", "term") and record.cleared_at is not None


# -- memory ---------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RssGrowth:
    """weir's resident memory over a span of the run.

    Attributes:
        before_kb: the RSS sampled last before the span (None: weir was not running then).
        peak_kb: the highest RSS of that same process during the span (or, when it was not
            running before, of whatever ran during the span).
        growth_kb: ``peak_kb - before_kb`` (None when ``before_kb`` is; a process started in the
            span is not compared with its own start-up).
    """

    before_kb: int | None
    peak_kb: int | None
    growth_kb: int | None


def rss_growth(samples: Sequence[Sample], start: float, end: float) -> RssGrowth:
    """How much the weir process running at ``start`` grew until ``end`` (see :class:`RssGrowth`).

    A process that replaced it (killed and started again) is left out: its memory is its own start-up's.
    """
    before = next((s for s in reversed(samples) if s.at <= start), None)
    inside = [s for s in samples if start < s.at <= end and s.rss_kb is not None]
    if before is None or before.rss_kb is None:
        peak = max((s.rss_kb for s in inside if s.rss_kb is not None), default=None)
        return RssGrowth(before_kb=None, peak_kb=peak, growth_kb=None)
    same = [s.rss_kb for s in inside if s.rss_kb is not None and (before.pid is None or s.pid == before.pid)]
    peak = max([before.rss_kb, *same])
    return RssGrowth(before_kb=before.rss_kb, peak_kb=peak, growth_kb=peak - before.rss_kb)


def describe_rss(before_kb: int | None, peak_kb: int | None, growth_kb: int | None) -> str:
    """``+1.9 MiB (66.6 → 68.5 MiB)``, or what is known."""
    if growth_kb is not None and before_kb is not None and peak_kb is not None:
        return f"{growth_kb / 1024:+.1f} MiB ({before_kb / 1024:.1f} → {peak_kb / 1024:.1f} MiB)"
    if peak_kb is not None:
        return f"peak {peak_kb / 1024:.1f} MiB (weir not running when it began)"
    return "not sampled"


def _rate(samples: Sequence[Sample], start: float, end: float) -> float:
    inside = [s for s in samples if start <= s.at <= end]
    before = [s for s in samples if s.at < start]
    first = before[-1] if before else (inside[0] if inside else None)
    if first is None or not inside or inside[-1].at <= first.at:
        return 0.0
    return (inside[-1].persisted - first.persisted) / (inside[-1].at - first.at)


_RESTART = re.compile(r"supervisor \S+: child \S+ restarting")
# a JSON ``disconnect`` event (every source), or the text form of a Farcaster stream lost (or never opened)
_RECONNECT = re.compile(r'"event": "disconnect"|stream from \S+ (?:lost|did not open) .* reconnecting')
_SUPERVISION_TEXT = re.compile(r"supervisor (\S+): child (\S+) (restarting|escalated)")
_SUPERVISION_EVENTS = {"restart": "restart", "escalation": "escalation", "restarting": "restart", "escalated": "escalation"}


def restarts_from_log(text: str) -> tuple[int, int]:
    """(supervisor restarts, source reconnects) counted in weir's log output."""
    return len(_RESTART.findall(text)), sum(1 for line in text.splitlines() if _RECONNECT.search(line))


# -- restarts by supervisor -----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SupervisionLogEntry:
    """A supervisor's ``restart`` or ``escalation`` log event.

    Attributes:
        kind: ``"restart"`` or ``"escalation"``.
        supervisor: the supervisor's name (``root``, ``farcaster/1``, …).
        child: the child it restarted or gave up on.
        ts: the line's wall-clock time (JSON logs); None for a text line (no usable date).
    """

    kind: str
    supervisor: str
    child: str | None = None
    ts: float | None = None


def supervision_from_log(text: str) -> list[SupervisionLogEntry]:
    """The supervisors' restart and escalation events in weir's log, JSON lines or text lines."""
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            kind = _SUPERVISION_EVENTS.get(record.get("event")) if isinstance(record, dict) else None
            if kind is None or not isinstance(record.get("supervisor"), str):
                continue
            ts = record.get("ts")
            entries.append(SupervisionLogEntry(
                kind=kind, supervisor=record["supervisor"], child=record.get("child"),
                ts=float(ts) if isinstance(ts, (int, float)) else None,
            ))  # fmt: skip
        elif match := _SUPERVISION_TEXT.search(line):
            entries.append(SupervisionLogEntry(kind=_SUPERVISION_EVENTS[match[3]], supervisor=match[1], child=match[2]))
    return entries


def supervisor_level(name: str) -> str:
    """``process`` (weir itself restarted), ``root``, or ``pipeline`` (``<network>/<partition>``)."""
    if name in ("process", "root"):
        return name
    return "pipeline" if "/" in name else name


def count_by_level(by_supervisor: Mapping[str, int]) -> dict[str, int]:
    """Sum counts by supervisor into counts by :func:`supervisor_level` (outermost level first)."""
    levels: dict[str, int] = {}
    for name, count in by_supervisor.items():
        if count:
            level = supervisor_level(name)
            levels[level] = levels.get(level, 0) + count
    order = {"process": 0, "root": 1, "pipeline": 2}
    return dict(sorted(levels.items(), key=lambda item: (order.get(item[0], 3), item[0])))


def format_restarts(total: int, by_level: Mapping[str, int]) -> str:
    """``0``, ``3 (pipeline 3)``, ``4 (process 1, pipeline 3)``: the total, then its breakdown."""
    parts = [f"{level} {count}" for level, count in by_level.items() if count]
    return f"{total} ({', '.join(parts)})" if parts else str(total)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items() if count)


def on_trio_clock(entries: Iterable[SupervisionLogEntry], wall_offset: float | None) -> list[tuple[float, SupervisionLogEntry]]:
    """Restart events with a time, placed on the trio clock: ``trio time = ts - wall_offset``."""
    if wall_offset is None:
        return []
    return [(e.ts - wall_offset, e) for e in entries if e.kind == "restart" and e.ts is not None]


def restarts_in_span(timed: Iterable[tuple[float, SupervisionLogEntry]], start: float, end: float) -> dict[str, int]:
    """Restarts by supervisor name with ``start <= t <= end`` (``timed`` from :func:`on_trio_clock`)."""
    counts: dict[str, int] = {}
    for at, entry in timed:
        if start <= at <= end and entry.kind == "restart":
            counts[entry.supervisor] = counts.get(entry.supervisor, 0) + 1
    return dict(sorted(counts.items()))


# -- the check ------------------------------------------------------------------------------------


async def check_run(
    redis_url: str,
    offered: Mapping[str, Sequence[OfferedEvent]],
    *,
    expected_cursors: Mapping[str, int] | None = None,
    name: str = "run",
    sampler: RunSampler | None = None,
    records: Sequence[FaultRecord] = (),
    restarts: int | None = None,
    reconnects: int = 0,
    schedule: str = "",
    prefix: str = "weir",
    source: str = "farcaster",
    window: float = 1.0,
    supervision: Sequence[SupervisionLogEntry] = (),
    process_restarts: int = 0,
    wall_offset: float | None = None,
    compare: Callable[..., PartitionReport] | None = None,
) -> RunReport:
    """Read every partition of ``offered`` from Redis (after the drain) and build the report.

    Restarts: ``supervision`` (:func:`supervision_from_log` of weir's log) gives them by supervisor,
    ``process_restarts`` adds weir's own restarts under ``"process"``; ``restarts`` (the total)
    defaults to their sum. ``wall_offset`` (``time.time() - trio.current_time()`` in the process
    that ran the schedule) places the log's events on the trio clock, to count them per fault.
    ``expected_cursors``: per partition, the cursor a full drain leaves (default: the last offered
    event's position). ``compare``: the source's own comparison instead of :func:`compare_partition`
    (e.g. a chain's, :func:`compare_chain`), called as ``compare(partition, entries, dead=…,
    cursors=…, final_cursor=…, final_token=…, rolled_back=…)``.
    """
    samples = sampler.samples if sampler is not None else []
    partitions = list(sampler.partitions) if sampler is not None else []
    reports = []
    async with RespClient.from_url(redis_url) as client:
        for partition, events in offered.items():
            keys = partition_keys(source, partition, prefix=prefix)
            entries = await client.xrange_all(keys.events)
            dead = await client.xrange_all(keys.dead)
            cursor, token = await client.command("HMGET", keys.cursor, "position", "token")
            column = partitions.index(partition) if partition in partitions else None
            cursors = [s.cursors[column] for s in samples] if column is not None else []
            final = None if cursor is None else int(cursor)
            rolled_back = rollback_samples(samples, records, window)
            if compare is not None:
                reports.append(compare(partition, entries, dead=dead, cursors=[*cursors, final], final_cursor=final,
                                       final_token=None if token is None else token.decode(), rolled_back=rolled_back))
                continue
            reports.append(
                compare_partition(partition, events, entries, dead=dead, cursors=[*cursors, final], final_cursor=final,
                                  expected_cursor=(expected_cursors or {}).get(partition), rolled_back=rolled_back)
            )
    origin = samples[0].at if samples else 0.0
    rss = [s.rss_kb for s in samples if s.rss_kb is not None]
    by_supervisor: dict[str, int] = {}
    escalations: dict[str, int] = {}
    for entry in supervision:
        counts = by_supervisor if entry.kind == "restart" else escalations
        counts[entry.supervisor] = counts.get(entry.supervisor, 0) + 1
    if process_restarts:
        by_supervisor["process"] = process_restarts
    timed = on_trio_clock(supervision, wall_offset)
    return RunReport(
        name=name,
        partitions=tuple(reports),
        faults=tuple(fault_report(r, samples, origin=origin, window=window, supervision=timed) for r in records),
        restarts=sum(by_supervisor.values()) if restarts is None else restarts,
        restarts_by_supervisor=dict(sorted(by_supervisor.items())),
        escalations_by_supervisor=dict(sorted(escalations.items())),
        reconnects=reconnects,
        duration_s=(samples[-1].at - samples[0].at) if samples else 0.0,
        rss_first_kb=rss[0] if rss else None,
        rss_peak_kb=max(rss) if rss else None,
        rss_last_kb=rss[-1] if rss else None,
        samples=len(samples),
        schedule=schedule,
    )
