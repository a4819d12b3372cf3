"""The interface between the delivery core (weir/deliver/actor.py) and a target.

The core owns Redis: it reads entries through the consumer group, hands them to the target, and
acknowledges (XACK) exactly the ids the target reports durable. A target owns only its medium.
One target instance serves one partition stream and is driven by one task (no locking needed).

Life of an entry inside a target::

    offer(entries) ──► buffered ──prepare()──► Prepared (written, not yet visible/durable)
                         │                       ├─ commit(p): durable → the core XACKs p.entry_ids
                         ├─ refused (reason)     └─ abort(p): dropped → redelivered later
                         └─ given back (given_back(): not taken now) → redelivered later

The core calls ``commit`` only after checking that every entry of ``p`` is still pending to this
consumer and far from being claimed by another instance (decisions.safe_to_commit); otherwise it
calls ``abort``. A target whose medium has no separate "make visible" step (a message bus whose
publish acknowledgement is the durability) does its work in ``prepare`` and nothing in ``commit``,
and relies on its own deduplication (e.g. a message id = the entry id) for what ``abort`` cannot
take back.

To add a target: implement this protocol in ``weir/deliver/<kind>.py``, add ``<kind>`` to
``weir.deliver.settings.TARGET_KINDS`` with its options, and build it in
``weir.deliver.service.build_target``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs

from weir.deliver.group import Entry


@attrs.frozen(kw_only=True)
class Prepared:
    """A unit of work written by the target and waiting for commit or abort.

    Attributes:
        entry_ids: the entries it holds, in stream order (what the core acknowledges on commit).
        handle: the target's own reference (e.g. the temporary file).
    """

    entry_ids: tuple[str, ...]
    handle: object


class Target(Protocol):
    async def recover(self) -> None:
        """Clean up after writers that died (e.g. remove their abandoned temporary files); called
        at every start and after entries were claimed from another consumer (which died)."""

    async def already_delivered(self, entries: Sequence[Entry]) -> set[str]:
        """Of entries about to be offered, the ids the target already holds durably (a consumer
        died between commit and acknowledgement, or Redis lost the group's last reads): the core
        acknowledges them without offering them. Called for every batch, so it must be cheap for
        entries newer than anything committed."""

    async def offer(self, entries: Sequence[Entry]) -> dict[str, str]:
        """Take entries in; returns the ones refused, id -> reason (left unacknowledged, so they
        are delivered again after deliver.claim_idle and dead-lettered after max_deliveries)."""

    def given_back(self) -> list[str]:
        """Ids offered since the last call that the target neither took nor refused (a webhook
        endpoint that did not answer in time), or took and then could not write (a Parquet file on
        a full disk; the core also asks after ``prepare``): the core stops holding them, and they
        stay pending, to be delivered again after deliver.claim_idle without counting as refusals."""

    def next_due(self) -> float | None:
        """``trio.current_time()`` at which ``prepare`` has work, or None while nothing is buffered."""

    async def prepare(self, now: float, *, everything: bool = False) -> list[Prepared]:
        """Write out what is due at ``now`` (everything buffered, with ``everything``)."""

    async def commit(self, prepared: Prepared) -> None:
        """Make ``prepared`` durable and visible; once this returns the entries may be acknowledged.
        Must not be cancellable half-way (the Parquet target runs it in a thread trio waits for)."""

    async def abort(self, prepared: Prepared) -> None:
        """Drop ``prepared`` (its entries stay pending and will be delivered again)."""

    async def aclose(self) -> None:
        """Drop whatever is buffered or prepared and release resources (never raises for that)."""
