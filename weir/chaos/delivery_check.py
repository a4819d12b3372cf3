"""The delivery checker: what a delivery target received against the partition streams it was fed.

Pure functions of lists (tested with hypothesis, no I/O); the engine
(:mod:`weir.chaos.delivery`) reads the streams, the group and the target, and calls
:func:`check_delivery`. Per partition, every count must be zero for a run to pass:

- **missing**: an entry of the stream the target never received;
- **duplicated**: an entry received more than once — with ``exactly_once`` (Parquet: in two
  files; NATS: twice in the JetStream stream, after its deduplication); an ``at_least_once`` target
  (webhooks) may receive an entry again, and is judged on its keys instead;
- **unstable_keys**: an entry received under two idempotency keys, or two entries under one (what a
  receiver deduplicates on must be a function of the entry, whatever the retries);
- **extra**: received for an entry the stream does not hold (another partition, an invented id);
- **pending**: entries still pending in the group once delivery had drained (read, never acknowledged);
- **dead**: entries in the delivery dead-letter stream (the runs feed only valid data).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence

import attrs

__all__ = ["AT_LEAST_ONCE", "EXACTLY_ONCE", "DeliveryReport", "PartitionDelivery", "Received", "check_delivery"]

EXACTLY_ONCE = "exactly_once"
AT_LEAST_ONCE = "at_least_once"


@attrs.frozen(kw_only=True)
class Received:
    """One item the target holds: the entry it carries and the key a receiver deduplicates on.

    Attributes:
        partition: the partition stream the entry came from.
        entry_id: its stream id (``<position>-<sub>``).
        key: its idempotency key (NATS: ``Nats-Msg-Id``; a webhook: its idempotency header;
            Parquet: the file row's own identity, ``<partition>/<stream_id>``).
    """

    partition: str
    entry_id: str
    key: str


@attrs.frozen(kw_only=True)
class PartitionDelivery:
    """One partition's verdict (see the module docstring for each count)."""

    partition: str
    entries: int
    received: int
    missing: int = 0
    duplicated: int = 0
    unstable_keys: int = 0
    extra: int = 0
    pending: int = 0
    dead: int = 0
    examples: tuple[str, ...] = ()  # a few ids of each problem, for the summary

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.unstable_keys or self.extra or self.pending or self.dead)


@attrs.frozen(kw_only=True)
class DeliveryReport:
    """Every partition's verdict for one target."""

    target: str
    guarantee: str
    partitions: tuple[PartitionDelivery, ...]

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.partitions)

    def total(self, field: str) -> int:
        return sum(getattr(p, field) for p in self.partitions)

    def summary(self) -> str:
        counts = ("entries", "received", "missing", "duplicated", "unstable_keys", "extra", "pending", "dead")
        line = ", ".join(f"{name} {self.total(name)}" for name in counts)
        examples = [e for p in self.partitions for e in p.examples]
        return (f"delivery to {self.target} ({self.guarantee.replace('_', ' ')}): {line}"
                + (f"; e.g. {', '.join(examples[:6])}" if examples else ""))


def check_delivery(
    target: str,
    guarantee: str,
    streams: Mapping[str, Sequence[str]],
    received: Iterable[Received],
    *,
    pending: Mapping[str, int] | None = None,
    dead: Mapping[str, int] | None = None,
) -> DeliveryReport:
    """Judge ``received`` against the entry ids of each partition stream (``streams``).

    ``pending`` and ``dead``: per partition, the group's pending entries after the drain and the
    length of its delivery dead-letter stream (missing partitions: 0).
    """
    if guarantee not in (EXACTLY_ONCE, AT_LEAST_ONCE):
        raise ValueError(f"unknown guarantee {guarantee!r}")
    received = list(received)
    by_partition: dict[str, list[Received]] = collections.defaultdict(list)
    for item in received:
        by_partition[item.partition].append(item)
    unstable = _unstable_keys(received)
    reports = [
        _check_partition(partition, guarantee, ids, by_partition.pop(partition, []), unstable.get(partition, set()),
                         (pending or {}).get(partition, 0), (dead or {}).get(partition, 0))
        for partition, ids in streams.items()
    ]
    for partition, items in sorted(by_partition.items()):  # partitions the run never fed
        reports.append(PartitionDelivery(partition=partition, entries=0, received=len(items), extra=len(items),
                                         examples=tuple(f"extra {partition}/{i.entry_id}" for i in items[:2])))
    return DeliveryReport(target=target, guarantee=guarantee, partitions=tuple(reports))


def _unstable_keys(received: Sequence[Received]) -> dict[str, set[str]]:
    """By partition, the entries received under two keys, or under a key another entry has too
    (of any partition: a receiver deduplicates on the key alone)."""
    keys_of: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    entries_of: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
    for item in received:
        keys_of[item.partition, item.entry_id].add(item.key)
        entries_of[item.key].add((item.partition, item.entry_id))
    unstable: dict[str, set[str]] = collections.defaultdict(set)
    for (partition, entry_id), keys in keys_of.items():
        if len(keys) > 1 or any(len(entries_of[k]) > 1 for k in keys):
            unstable[partition].add(entry_id)
    return unstable


def _check_partition(partition: str, guarantee: str, ids: Sequence[str], items: Sequence[Received],
                     unstable_ids: set[str], pending: int, dead: int) -> PartitionDelivery:
    expected = set(ids)
    counts = collections.Counter(i.entry_id for i in items)
    missing = [i for i in ids if i not in counts]
    extra = [i for i in counts if i not in expected]
    duplicated = [i for i, n in counts.items() if n > 1 and i in expected] if guarantee == EXACTLY_ONCE else []
    unstable = sorted(unstable_ids)
    examples = [*(f"missing {partition}/{i}" for i in missing[:2]), *(f"duplicated {partition}/{i}" for i in duplicated[:2]),
                *(f"extra {partition}/{i}" for i in extra[:2]), *(f"unstable key {partition}/{i}" for i in unstable[:2])]
    return PartitionDelivery(
        partition=partition, entries=len(ids), received=len(items), missing=len(missing), duplicated=len(duplicated),
        unstable_keys=len(unstable), extra=len(extra), pending=pending, dead=dead, examples=tuple(examples),
    )  # fmt: skip
