"""Sans-IO ordering rule of the AT Protocol sources: what an arriving event's identity means.

The firehose's identity is the relay's ``seq``: a frame at or below the last one is a duplicate.
Jetstream's position, ``time_us``, is not an identity and is not monotonic (Jetstream delivers a
few live events ahead of the last replayed ones around its replay-to-live cutover), so
:class:`JetstreamOrder` judges each event by its identity (a commit op: DID, rev, collection/rkey, action, CID;
an identity or account event: kind, DID, time_us) and hands out stream positions itself:

- position = ``time_us``, or one above the highest position handed out when that is not below
  (a late event gets a position above the persisted cursor, which persist.lua requires);
- it remembers the identities of the events whose ``time_us`` lies within ``margin`` µs of its
  highest position, and a connection resumes at ``highest - margin`` (Jetstream replays from the
  cursor inclusively): every event a crash may have left unpersisted is sent again, and every one
  already handed on is known by identity and skipped.

After a restart the memory is rebuilt from the stream itself (:meth:`JetstreamOrder.resumed`: the
entries at positions at or above ``cursor - margin``), so it is exactly what Redis holds, written
by the same atomic script as the cursor, and no extra key is needed.

Verdicts: ``new`` (in order), ``late`` (new, but after an event with a larger ``time_us``: a
reordered event, persisted), ``duplicate`` (its identity was already handed on), ``stale`` (a
commit whose rev is older than a rev of the same DID seen at a smaller ``time_us``),
``before_start`` (at or below a configured start, when nothing was persisted yet).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable

import attrs

NEW = "new"
LATE = "late"
DUPLICATE = "duplicate"
STALE = "stale"
BEFORE_START = "before_start"


@attrs.define(eq=False)
class RevTracker:
    """The last rev seen per DID, for at most ``capacity`` DIDs (least recently updated forgotten).

    ``at`` is where the rev was seen (Jetstream's ``time_us``; 0 on the firehose, whose seqs are
    never out of order): a rev seen at a smaller ``at`` than the DID's last is a reordered event,
    not a stale one, and is compared with nothing.
    """

    capacity: int = 1_000_000
    _revs: dict[str, tuple[str, int]] = attrs.Factory(dict)

    def entries(self) -> dict[str, tuple[str, int]]:
        """The table itself, DID -> (rev, at), oldest update first: for the firehose reader, which
        applies :meth:`advance`'s common cases inline (a new DID with room left; a rev above a
        firehose rev) and calls it for the rest."""
        return self._revs

    def last(self, did: str) -> str | None:
        entry = self._revs.get(did)
        return None if entry is None else entry[0]

    def advance(self, did: str, rev: str, *, allow_equal: bool = False, at: int = 0) -> bool:
        """Record ``rev`` for ``did``; False (nothing recorded) if it does not move forward."""
        entry = self._revs.get(did)
        if entry is not None:
            last, last_at = entry
            if at < last_at:  # arrived late: older in time than the DID's last, so not stale by its rev
                if rev > last:
                    self._revs[did] = (rev, last_at)
                return True
            if rev < last or (rev == last and not allow_equal):
                return False
            del self._revs[did]  # re-insert: the dict's order is the eviction order
        elif len(self._revs) >= self.capacity:
            del self._revs[next(iter(self._revs))]
        self._revs[did] = (rev, at)
        return True


def commit_identity(did: str, rev: str, collection: str, rkey: str, action: str, cid: str) -> tuple[str, ...]:
    """A Jetstream commit op: one commit (DID + rev) touches one path once (the action and the
    record's CID, "" for a delete, only tell apart ops a protocol-breaking commit repeats)."""
    return ("commit", did, rev, collection, rkey, action, cid)


def event_identity(kind: str, did: str, time_us: int) -> tuple[str | int, ...]:
    """A Jetstream identity or account event (no rev): its kind, DID and time."""
    return (kind, did, time_us)


def identity_of_fields(fields: dict[str, str]) -> tuple[int, Hashable, str, str] | None:
    """(time_us, identity, did, rev) of a persisted Jetstream entry's fields; None if not one of weir's."""
    try:
        time_us = int(fields["time_us"])
        kind, did = fields["kind"], fields["did"]
        if kind == "commit":
            rev = fields["rev"]
            identity = commit_identity(did, rev, fields["collection"], fields["rkey"], fields["action"], fields.get("cid", ""))
            return time_us, identity, did, rev
        return time_us, event_identity(kind, did, time_us), did, ""
    except (KeyError, ValueError):
        return None


@attrs.frozen(slots=True)
class Admission:
    """What :meth:`JetstreamOrder.admit` decided.

    Attributes:
        verdict: ``new``, ``late``, ``duplicate``, ``stale`` or ``before_start``.
        position: the stream position of a ``new`` or ``late`` event; else the highest so far.
        beyond_margin: a late event older than the remembered window: it is persisted, but a
            crash before it is durable could not bring it back (raise the margin).
    """

    verdict: str
    position: int
    beyond_margin: bool = False

    @property
    def persist(self) -> bool:
        return self.verdict in (NEW, LATE)


@attrs.define(eq=False)
class JetstreamOrder:
    """The identity memory and position counter of one Jetstream connection (no I/O).

    Args:
        margin: µs of ``time_us`` below the highest position whose identities are remembered;
            also how far before it a connection resumes.
        high: the highest position handed out or passed over (the chunks' ``through``); None
            before the first event.
        floor: ``time_us`` at or below which nothing is taken (a configured start, before anything
            was persisted); None: no floor.
        capacity: most identities remembered (a stream far faster than expected forgets its oldest).
    """

    margin: int
    high: int | None = None
    floor: int | None = None
    revs: RevTracker = attrs.Factory(RevTracker)
    capacity: int = 1_000_000
    latest: int | None = None  # the largest time_us seen: an event below it arrived late
    _seen: dict[Hashable, int] = attrs.Factory(dict)  # identity -> time_us
    # In arrival order, forgotten from the oldest arrival while it is below the window: a late
    # identity may be kept a little longer than needed, never forgotten too early (O(1) each).
    _arrived: deque[tuple[int, Hashable]] = attrs.Factory(deque)

    @classmethod
    def resumed(cls, cursor: int, entries: Iterable[tuple[int, Hashable, str, str]], *, margin: int,
                revs: RevTracker | None = None, capacity: int = 1_000_000) -> JetstreamOrder:
        """The state after a restart from the persisted ``cursor``, rebuilt from the persisted
        ``entries`` (time_us, identity, did, rev) at positions from ``cursor - margin`` on, in
        stream order."""
        order = cls(margin=margin, high=cursor, latest=cursor, revs=revs or RevTracker(), capacity=capacity)
        for time_us, identity, did, rev in entries:
            if rev:
                order.revs.advance(did, rev, allow_equal=True, at=time_us)
            order._remember(identity, time_us)
        order._forget_old()
        return order

    def resume_cursor(self) -> int | None:
        """Where a connection asks Jetstream to start (inclusive); None: per the configured start."""
        if self.high is None:
            return None
        start = self.high - self.margin
        if self.floor is not None:
            start = max(start, self.floor)
        return max(start, 1)

    def known(self, identity: Hashable) -> bool:
        return identity in self._seen

    def admit(self, time_us: int, identity: Hashable, *, did: str = "", rev: str = "") -> Admission:
        """Judge one event; a ``new`` or ``late`` one is remembered and gets its position."""
        high = self.high
        if identity in self._seen:
            return Admission(DUPLICATE, high if high is not None else time_us)
        if self.floor is not None and time_us <= self.floor:
            return Admission(BEFORE_START, high if high is not None else self.floor)
        if rev and not self.revs.advance(did, rev, allow_equal=True, at=time_us):
            return Admission(STALE, self.pass_over(time_us))  # dropped, but read: the cursor may pass it
        late = self.latest is not None and time_us < self.latest
        beyond = late and high is not None and time_us < high - self.margin
        position = time_us if high is None or time_us > high else high + 1
        self.high = position
        self._see(time_us)
        self._remember(identity, time_us)
        self._forget_old()
        return Admission(LATE if late else NEW, position, beyond)

    def pass_over(self, time_us: int) -> int:
        """A message that is not persisted (filtered, unknown kind): the cursor may move past it.
        Returns the highest position."""
        self._see(time_us)
        if (self.floor is None or time_us > self.floor) and (self.high is None or time_us > self.high):
            self.high = time_us
            self._forget_old()
        return self.high if self.high is not None else time_us

    def remembered(self) -> int:
        return len(self._seen)

    def _see(self, time_us: int) -> None:
        if self.latest is None or time_us > self.latest:
            self.latest = time_us

    def _remember(self, identity: Hashable, time_us: int) -> None:
        self._seen[identity] = time_us
        self._arrived.append((time_us, identity))

    def _forget_old(self) -> None:
        """Drop identities below the window (and the oldest beyond ``capacity``)."""
        horizon = -1 if self.high is None else self.high - self.margin
        arrived = self._arrived
        while arrived and (arrived[0][0] < horizon or len(arrived) > self.capacity):
            self._seen.pop(arrived.popleft()[1], None)
