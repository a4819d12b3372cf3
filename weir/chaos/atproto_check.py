"""The AT Protocol comparison of the chaos checker: a partition's stream judged by identity.

Position by position (:func:`~weir.chaos.checker.compare_partition`) does not fit: an op's data is
not unique (every delete's is empty), and a Jetstream event that arrives after a later one is
stored above the highest position so far, not at its ``time_us``. So each entry is matched to the
offered event with its identity (:mod:`weir.codecs.atproto_order`: a commit op by DID, rev, path,
action and CID; an identity or account event by its kind, DID and seq or ``time_us``), and then:

- **lost** / **unexpected** / **duplicated**: an offered identity absent, an identity never offered
  (or offered with other bytes), an identity stored twice;
- **wrong_id**: a firehose entry not at ``<seq>-<op index>``; a Jetstream entry not at
  ``<time_us>-0`` when that is above the entry before it, else not just above that one;
- **out_of_order**: firehose, an entry offered before one stored ahead of it; Jetstream, an entry
  whose ``time_us`` is below one stored ahead of it although the relay never sent it late
  (``late``: the simulator's record of the messages it sent after one with a larger ``time_us``);
- **cursor_mismatch**: the final cursor is not the last offered seq (firehose) or not the highest
  position stored (Jetstream: the reader's cursor is the highest position it handed out).

Pure functions of lists, tested without Redis.
"""

from __future__ import annotations

from collections.abc import Collection, Container, Hashable, Iterable, Mapping, Sequence

import attrs

from weir.chaos.checker import PartitionReport, cursor_regressions
from weir.codecs.atproto_order import commit_identity, event_identity

__all__ = ["AtprotoOffered", "compare_atproto", "entry_identity", "offered_identity"]

Entry = tuple[bytes, Mapping[bytes, bytes]]


@attrs.frozen(kw_only=True)
class AtprotoOffered:
    """One entry the relay offered, as the stream must hold it.

    ``position``: the seq (firehose) or ``time_us`` (Jetstream); ``sub``: the op's index in its
    commit (firehose; 0 on Jetstream, one message per op); ``fields``: ``did`` and, for a commit op,
    ``rev``, ``collection``, ``rkey``, ``action`` and ``cid`` (none for a delete).
    """

    position: int
    sub: int
    kind: str
    data: bytes
    fields: Mapping[str, str]

    @property
    def identity(self) -> Hashable:
        return offered_identity(self.kind, self.position, self.fields)


def offered_identity(kind: str, position: int, fields: Mapping[str, str]) -> Hashable:
    """The identity of an offered event (its position is the seq or ``time_us`` of a non-commit)."""
    if kind == "commit":
        return commit_identity(fields["did"], fields["rev"], fields["collection"], fields["rkey"], fields["action"],
                               fields.get("cid", ""))
    return event_identity(kind, fields["did"], position)


def entry_identity(mode: str, fields: Mapping[bytes, bytes]) -> Hashable | None:
    """The identity of a stored entry (None: not an entry weir writes for this source)."""
    text = {key.decode(errors="replace"): value.decode(errors="replace") for key, value in fields.items()}
    try:
        kind = text["kind"]
        position = int(text["seq" if mode == "firehose" else "time_us"]) if kind != "commit" else 0
        return offered_identity(kind, position, text)
    except (KeyError, ValueError):
        return None


def _entry_position(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def compare_atproto(
    mode: str,
    partition: str,
    offered: Sequence[AtprotoOffered],
    entries: Sequence[Entry],
    *,
    late: Collection[int] = (),
    dead: Sequence[Entry] = (),
    cursors: Iterable[int | None] = (),
    final_cursor: int | None = None,
    rolled_back: Container[int] = (),
) -> PartitionReport:
    """Compare one AT Protocol partition's stream with what the relay offered (module docstring)."""
    index = {event.identity: i for i, event in enumerate(offered)}
    seen = [0] * len(offered)
    unexpected = duplicated = wrong_id = out_of_order = 0
    examples: list[str] = []
    highest = -1  # firehose: the highest offered index stored so far; Jetstream: the highest time_us
    last_position = -1  # Jetstream: the last entry's position
    for entry_id, fields in entries:
        i = index.get(entry_identity(mode, fields))
        if i is None:
            unexpected += 1
            examples.append(f"unexpected entry {entry_id.decode()}")
            continue
        event = offered[i]
        seen[i] += 1
        if seen[i] > 1:
            duplicated += 1
            examples.append(f"event at {event.position}-{event.sub} again at {entry_id.decode()}")
            continue
        if fields.get(b"data", b"") != event.data:
            unexpected += 1
            examples.append(f"entry {entry_id.decode()} holds other data than offered")
        position, sub = _entry_position(entry_id)
        if mode == "firehose":
            if (position, sub) != (event.position, event.sub):
                wrong_id += 1
                examples.append(f"event {event.position}-{event.sub} stored as {entry_id.decode()}")
            if i < highest:
                out_of_order += 1
                examples.append(f"event {event.position}-{event.sub} after event {offered[highest].position}")
            highest = max(highest, i)
            continue
        # weir's rule (weir.codecs.atproto_order): at its time_us, unless that is not above the
        # last position handed out; then just above it
        expected = event.position if event.position > last_position else last_position + 1
        if (position, sub) != (expected, 0):
            wrong_id += 1
            examples.append(f"event at time_us {event.position} stored as {entry_id.decode()}, not {expected}-0")
        if event.position < highest and event.position not in late:
            out_of_order += 1
            examples.append(f"time_us {event.position} after time_us {highest}, never sent late")
        highest = max(highest, event.position)
        last_position = position
    missing = [f"{offered[i].position}-{offered[i].sub}" for i, n in enumerate(seen) if n == 0]
    examples += [f"event {key} lost" for key in missing[:3]]
    if mode == "firehose":
        expected_cursor = offered[-1].position if offered else None
    else:
        expected_cursor = _entry_position(entries[-1][0])[0] if entries else None
    return PartitionReport(
        partition=partition,
        offered=len(offered),
        persisted=len(entries),
        dead=len(dead),
        lost=len(missing),
        unexpected=unexpected,
        duplicated=duplicated,
        out_of_order=out_of_order,
        wrong_id=wrong_id,
        cursor_regressions=cursor_regressions(cursors, rolled_back=rolled_back),
        final_cursor=final_cursor,
        cursor_mismatch=final_cursor != expected_cursor,
        examples=tuple(examples[:8]),
    )
