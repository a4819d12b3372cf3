"""The checker: after a run and a full drain, compare what Redis holds with what the network offered.

Jepsen's vocabulary (shared/notes/reliability.md), per partition — every count must be zero:

- **lost**: offered but in neither the events stream nor the dead-letter stream;
- **unexpected**: present but never offered;
- **duplicated**: an offered event present more than once (under any entry id);
- **out_of_order**: an entry whose event was offered *before* an entry ahead of it;
- **wrong_id**: an entry whose id is not ``<event id>-0``;
- **cursor_regressions**: the persisted cursor, sampled during the run, went down.

During the run a :class:`RunSampler` polls Redis (stream lengths and cursors, every few ms,
directly — not through a proxy) and the weir process's VmRSS; from those samples and the
schedule's :class:`~weir.chaos.schedule.FaultRecord` s it measures, per fault, the recovery time
(fault cleared → first newly persisted event) and the rates during and after it.

The comparison and the measurements are pure functions of lists (tested without Redis); only
:class:`RespClient`, :class:`RunSampler` and :func:`check_run` do I/O.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Self
from urllib.parse import urlsplit

import attrs
import trio

from weir.chaos.schedule import FaultRecord
from weir.sim.farcaster_data import SnapchainSimConfig, generate_offered
from weir.sinks.keys import partition_keys

__all__ = [
    "FaultReport",
    "PartitionReport",
    "RespClient",
    "RespError",
    "RunReport",
    "RunSampler",
    "Sample",
    "check_run",
    "compare_partition",
    "cursor_regressions",
    "fault_report",
    "offered_from_config",
    "read_rss_kb",
    "restarts_from_log",
]

log = logging.getLogger("weir.chaos.checker")

Entry = tuple[bytes, Mapping[bytes, bytes]]  # (entry id, fields), as XRANGE returns them


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
    """One poll: trio time, per partition the stream length and cursor (None: no key yet), weir's RSS."""

    at: float
    lengths: tuple[int, ...]
    cursors: tuple[int | None, ...]
    rss_kb: int | None

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
        sample = Sample(
            at=trio.current_time(),
            lengths=tuple(int(r) for r in replies[0::2]),
            cursors=tuple(None if r is None else int(r) for r in replies[1::2]),
            rss_kb=read_rss_kb(pid) if pid else None,
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
    examples: tuple[str, ...] = ()  # a few concrete findings, for the failure message

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.unexpected or self.duplicated or self.out_of_order or self.wrong_id
            or self.cursor_regressions or self.cursor_mismatch
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
    """

    fault: str
    applied_at: float
    cleared_at: float | None
    recovery_s: float | None
    rate_during: float
    rate_after: float


@attrs.frozen(kw_only=True)
class RunReport:
    """Everything a chaos run measured; ``ok`` is the verdict, ``table_row()`` its summary line.

    Attributes:
        name: the scenario.
        partitions: one :class:`PartitionReport` each.
        faults: one :class:`FaultReport` per applied fault.
        restarts: supervisor restarts plus process restarts during the run.
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
            f"{self.restarts} | {self.reconnects} | {rss} | {'ok' if self.ok else 'FAIL'} |"
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
                + (f" examples={list(p.examples)}" if p.examples else "")
            )
        for f in self.faults:
            recovery = "none" if f.recovery_s is None else f"{f.recovery_s * 1000:.0f} ms"
            lines.append(
                f"fault {f.fault}: recovery {recovery}, {f.rate_during:.0f} ev/s during, {f.rate_after:.0f} ev/s after"
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
    offered: Sequence[tuple[int, bytes]],
    entries: Sequence[Entry],
    *,
    dead: Sequence[Entry] = (),
    cursors: Iterable[int | None] = (),
    final_cursor: int | None = None,
) -> PartitionReport:
    """Compare one partition's stream (and dead letters) with what was offered, in order.

    An entry is identified by its ``data`` (a HubEvent's bytes include its id, so equal bytes are
    the same event). ``cursors`` are the cursor samples taken during the run, in time order.
    """
    index = {payload: i for i, (_, payload) in enumerate(offered)}
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
        if _position(entry_id) != (offered[i][0], 0):
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
    regressions = cursor_regressions(cursors)
    expected_cursor = offered[-1][0] if offered else None
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


def cursor_regressions(cursors: Iterable[int | None]) -> int:
    """How many times a cursor sample is below the previous one (a vanished cursor counts too)."""
    values = [-1 if cursor is None else cursor for cursor in cursors]
    return sum(1 for before, after in itertools.pairwise(values) if after < before)


def fault_report(record: FaultRecord, samples: Sequence[Sample], *, origin: float, window: float = 1.0) -> FaultReport:
    """Recovery time and rates around one fault, from the run's samples."""
    applied, cleared = record.applied_at, record.cleared_at
    if cleared is None:
        return FaultReport(fault=record.fault.describe(), applied_at=applied - origin, cleared_at=None,
                           recovery_s=None, rate_during=0.0, rate_after=0.0)  # fmt: skip
    before_clear = [s for s in samples if s.at <= cleared]
    after_clear = [s for s in samples if s.at > cleared]
    at_clear = before_clear[-1].persisted if before_clear else 0
    recovery = next((s.at - cleared for s in after_clear if s.persisted > at_clear), None)
    return FaultReport(
        fault=record.fault.describe(),
        applied_at=applied - origin,
        cleared_at=cleared - origin,
        recovery_s=recovery,
        rate_during=_rate(samples, applied, cleared),
        rate_after=_rate(samples, cleared, cleared + window),
    )


def _rate(samples: Sequence[Sample], start: float, end: float) -> float:
    inside = [s for s in samples if start <= s.at <= end]
    before = [s for s in samples if s.at < start]
    first = before[-1] if before else (inside[0] if inside else None)
    if first is None or not inside or inside[-1].at <= first.at:
        return 0.0
    return (inside[-1].persisted - first.persisted) / (inside[-1].at - first.at)


_RESTART = re.compile(r"supervisor \S+: child \S+ restarting")
_RECONNECT = re.compile(r"stream from \S+ lost .* reconnecting")


def restarts_from_log(text: str) -> tuple[int, int]:
    """(supervisor restarts, source reconnects) counted in weir's log output."""
    return len(_RESTART.findall(text)), len(_RECONNECT.findall(text))


def offered_from_config(config: SnapchainSimConfig, shards: Iterable[int], count: int | None = None) -> dict[str, list[tuple[int, bytes]]]:
    """What a simulator with ``config`` offers per shard: ``count`` events each (default ``total``)."""
    n = count if count is not None else config.total
    if n is None:
        raise ValueError("the simulator produces forever: give count (or set total)")
    return {str(shard): generate_offered(config, shard, n) for shard in shards}


# -- the check ------------------------------------------------------------------------------------


async def check_run(
    redis_url: str,
    offered: Mapping[str, Sequence[tuple[int, bytes]]],
    *,
    name: str = "run",
    sampler: RunSampler | None = None,
    records: Sequence[FaultRecord] = (),
    restarts: int = 0,
    reconnects: int = 0,
    schedule: str = "",
    prefix: str = "weir",
    source: str = "farcaster",
    window: float = 1.0,
) -> RunReport:
    """Read every partition of ``offered`` from Redis (after the drain) and build the report."""
    samples = sampler.samples if sampler is not None else []
    partitions = list(sampler.partitions) if sampler is not None else []
    reports = []
    async with RespClient.from_url(redis_url) as client:
        for partition, events in offered.items():
            keys = partition_keys(source, partition, prefix=prefix)
            entries = await client.xrange_all(keys.events)
            dead = await client.xrange_all(keys.dead)
            cursor = await client.command("HGET", keys.cursor, "position")
            column = partitions.index(partition) if partition in partitions else None
            cursors = [s.cursors[column] for s in samples] if column is not None else []
            final = None if cursor is None else int(cursor)
            reports.append(
                compare_partition(partition, events, entries, dead=dead, cursors=[*cursors, final], final_cursor=final)
            )
    origin = samples[0].at if samples else 0.0
    rss = [s.rss_kb for s in samples if s.rss_kb is not None]
    return RunReport(
        name=name,
        partitions=tuple(reports),
        faults=tuple(fault_report(r, samples, origin=origin, window=window) for r in records),
        restarts=restarts,
        reconnects=reconnects,
        duration_s=(samples[-1].at - samples[0].at) if samples else 0.0,
        rss_first_kb=rss[0] if rss else None,
        rss_peak_kb=max(rss) if rss else None,
        rss_last_kb=rss[-1] if rss else None,
        samples=len(samples),
        schedule=schedule,
    )
