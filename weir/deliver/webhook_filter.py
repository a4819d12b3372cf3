"""Which entries a webhook endpoint receives: its filters (docs/delivery.md, Webhooks).

Pure. Every non-empty filter must match (and); within one filter any value may (or); an entry
without the field a filter reads is not selected. The source is the pipeline's own ``source``.
An entry no filter selects is acknowledged without a request (weir/deliver/webhook.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import attrs

from weir.deliver.entry_fields import UINT64_DIGITS
from weir.deliver.settings import DeliverPipelineSettings

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}\Z")
_NSID = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(\.\*|\.[A-Za-z0-9-]+)\Z")
#: The filters each only applies to one source's entries.
_SOURCE_OF_FILTER = {"fids": "farcaster", "collections": "atproto", "contracts": "ethereum", "events": "ethereum"}


@attrs.frozen(kw_only=True)
class EndpointFilter:
    """An endpoint's filters; an empty one lets every value through."""

    kinds: frozenset[bytes] = frozenset()
    fids: frozenset[int] = frozenset()
    collections: frozenset[str] = frozenset()  # exact NSIDs
    collection_prefixes: tuple[str, ...] = ()  # "app.bsky." from "app.bsky.*"
    contracts: frozenset[str] = frozenset()  # lower case
    events: frozenset[bytes] = frozenset()

    @classmethod
    def of(cls, pipe: DeliverPipelineSettings) -> EndpointFilter:
        return cls(kinds=frozenset(kind.encode() for kind in pipe.kinds), fids=frozenset(pipe.fids),
                   collections=frozenset(c for c in pipe.collections if not c.endswith(".*")),
                   collection_prefixes=tuple(c[:-1] for c in pipe.collections if c.endswith(".*")),
                   contracts=frozenset(c.lower() for c in pipe.contracts),
                   events=frozenset(event.encode() for event in pipe.events))

    def selects(self, fields: Mapping[bytes, bytes]) -> bool:
        """Whether the entry with these fields goes to the endpoint."""
        if self.kinds and fields.get(b"kind") not in self.kinds:
            return False
        if self.fids:
            fid = fields.get(b"fid", b"")
            # the length first: int() of over 4,300 digits raises, which crashed the offer
            if not (len(fid) <= UINT64_DIGITS and fid.isdigit() and int(fid) in self.fids):
                return False
        if self.collections or self.collection_prefixes:
            collection = fields.get(b"collection", b"").decode("utf-8", errors="replace")
            if collection not in self.collections and not collection.startswith(self.collection_prefixes):
                return False
        if self.contracts and fields.get(b"address", b"").decode("ascii", errors="replace").lower() not in self.contracts:
            return False
        return not (self.events and fields.get(b"event") not in self.events)


def filter_problems(pipe: DeliverPipelineSettings) -> list[str]:
    """What is wrong with a webhook pipeline's filters, one line each ("<setting>: <why>")."""
    problems = []
    for name, source in _SOURCE_OF_FILTER.items():
        if getattr(pipe, name) and pipe.source != source:
            problems.append(f"{name}: only {source} entries have it (this pipeline's source is {pipe.source!r})")
    for contract in pipe.contracts:
        if not _ADDRESS.match(contract):
            problems.append(f"contracts: expected an address (0x and 40 hex digits), got {contract!r}")
    for collection in pipe.collections:
        if not _NSID.match(collection):
            problems.append(f"collections: expected an NSID (app.bsky.feed.post) or a prefix (app.bsky.*), got {collection!r}")
    return problems
