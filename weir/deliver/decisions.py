"""The decisions of delivery, without I/O: what to dead-letter, when a file is due, where a row goes.

Every function here is pure (or a small value object) and property-tested
(tests/test_deliver_decisions.py); the actor (weir/deliver/actor.py) only carries out what they say.
"""

from __future__ import annotations

import bisect
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence, Set

import attrs

from weir.sinks.keys import validate_name

_ENTRY_ID = re.compile(r"(\d+)-(\d+)\Z")


def parse_entry_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id ``"<ms>-<seq>"`` as two ints, which order as Redis orders ids.

    Raises:
        ValueError: not a complete stream id.
    """
    match = _ENTRY_ID.match(entry_id)
    if match is None:
        raise ValueError(f"not a stream entry id: {entry_id!r}")
    return int(match[1]), int(match[2])


@attrs.frozen(kw_only=True)
class Claimed:
    """An entry taken over (or read again) from the pending list, with its delivery count."""

    entry_id: str
    deliveries: int


@attrs.frozen(kw_only=True)
class Triage:
    """What to do with entries read again: deliver them, or dead-letter them with a reason."""

    deliver: tuple[str, ...]
    dead: tuple[tuple[str, str], ...]  # (entry id, reason)


UNEXPLAINED_FACTOR = 4
"""Without a refusal seen, an entry is given up after this many times ``max_deliveries``."""


def triage(claimed: Sequence[Claimed], *, max_deliveries: int, reasons: FailureMemory,
           held: Set[str] = frozenset()) -> Triage:
    """Split entries read again into those to try once more and those to give up on.

    Entries the target ``held`` (offered, not yet committed or dropped) are in neither list: this
    consumer claimed them back from itself because a slow commit let them idle, and offering them
    again would write them twice (their counts rose with that claim, which is no failure either).

    An entry's count includes the delivery now being made (Redis raised it when it handed the entry
    over), so one whose count is above ``max_deliveries`` has already been tried that many times
    without being accepted. It goes to the delivery dead-letter stream with the last error seen
    for it by this instance, once it is over ``max_deliveries`` and this instance saw its target
    refuse it. Redis's count also rises when an instance that stalled has its own entries claimed
    back, which says nothing against the entry: without a refusal seen here, it is given up only
    past ``UNEXPLAINED_FACTOR`` times ``max_deliveries`` (an entry that crashes every deliverer
    that takes it leaves no refusal behind, and must not be retried for ever either).
    """
    deliver: list[str] = []
    dead: list[tuple[str, str]] = []
    for item in claimed:
        if item.entry_id in held:
            continue
        last = reasons.get(item.entry_id)
        limit = max_deliveries if last else max_deliveries * UNEXPLAINED_FACTOR
        if item.deliveries > limit:
            tried = f"not accepted after {item.deliveries - 1} deliveries (deliver.max_deliveries = {max_deliveries})"
            dead.append((item.entry_id, f"{tried}: {last}" if last else tried))
        else:
            deliver.append(item.entry_id)
    return Triage(deliver=tuple(deliver), dead=tuple(dead))


class FailureMemory:
    """The last reason a target refused each entry, for the dead letter; bounded (oldest forgotten)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._reasons: OrderedDict[str, str] = OrderedDict()
        self._capacity = capacity

    def remember(self, entry_id: str, reason: str) -> None:
        self._reasons[entry_id] = reason
        self._reasons.move_to_end(entry_id)
        while len(self._reasons) > self._capacity:
            self._reasons.popitem(last=False)

    def get(self, entry_id: str) -> str | None:
        return self._reasons.get(entry_id)

    def forget(self, entry_ids: Iterable[str]) -> None:
        for entry_id in entry_ids:
            self._reasons.pop(entry_id, None)

    def __len__(self) -> int:
        return len(self._reasons)


@attrs.frozen(kw_only=True)
class RollPolicy:
    """When an open file is committed: at ``max_rows`` rows or ``max_age`` seconds after it opened."""

    max_rows: int
    max_age: float

    def due(self, *, rows: int, opened_at: float, now: float) -> bool:
        return rows >= self.max_rows or now >= self.due_at(opened_at)  # the same sum as due_at: no rounding gap

    def due_at(self, opened_at: float) -> float:
        return opened_at + self.max_age


def hour_of(timestamp: float) -> str:
    """The UTC hour a row's file belongs to, as a path value: ``2026-12-05T22``."""
    return time.strftime("%Y-%m-%dT%H", time.gmtime(max(0.0, timestamp)))


def safe_to_commit(idle_ms: Sequence[int | None], *, claim_idle: float) -> bool:
    """Whether a file's entries may be committed: all still pending to this consumer (``None``: not)
    and each far enough from ``claim_idle`` that no other instance can claim it meanwhile.

    The margin (a third of claim_idle) is the time the commit itself (fsync, rename) may take.
    """
    limit = claim_idle * 1000 * 2 / 3
    return all(idle is not None and idle < limit for idle in idle_ms)


def twin_alive(*, idle_before_ms: int, idle_after_ms: int, waited_ms: float) -> bool:
    """Whether another live instance reads under this consumer name: its idle time (XINFO
    CONSUMERS) went back while this instance, just started, waited without touching the group.
    A live instance reads at least every block_ms, so a wait of twice that sees it read in the
    wait's second half; a dead one's idle time only grows by the wait."""
    return idle_after_ms < idle_before_ms + waited_ms / 2


def partition_problem(partition: str) -> str | None:
    """Why ``partition`` cannot be delivered (None: it can): a name that cannot be in a Redis key,
    or one with a ``/`` (``partition=<it>`` is a directory of the Parquet files: ``x/../..``
    would leave them)."""
    try:
        validate_name("partition", partition)
    except ValueError as exc:
        return str(exc)
    if "/" in partition:
        return f"partition {partition!r} cannot be a directory name: it contains '/'"
    return None


class SortedIds:
    """Entry ids sorted as Redis orders them, to find those a committed file's id range covers."""

    def __init__(self, entry_ids: Iterable[str]) -> None:
        keyed = sorted((parse_entry_id(entry_id), entry_id) for entry_id in entry_ids)
        self._keys = [key for key, _ in keyed]
        self._ids = [entry_id for _, entry_id in keyed]

    def between(self, first: tuple[int, int], last: tuple[int, int]) -> list[str]:
        """The ids from ``first`` to ``last`` inclusive (parsed ids), by bisection."""
        return self._ids[bisect.bisect_left(self._keys, first):bisect.bisect_right(self._keys, last)]
