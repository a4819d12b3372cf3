"""The networks the chaos suite can drive, by name: what ``--random`` cycles through and what a
replayed ``--schedule`` runs against (the source whose targets its faults name)."""

from __future__ import annotations

from weir.chaos.ethereum import ETHEREUM
from weir.chaos.farcaster import FARCASTER
from weir.chaos.schedule import Schedule
from weir.chaos.source import ChaosSource

__all__ = ["SOURCES", "source_of"]

SOURCES: dict[str, ChaosSource] = {"farcaster": FARCASTER, "ethereum": ETHEREUM}


def source_of(schedule: Schedule, default: ChaosSource = FARCASTER) -> ChaosSource:
    """The source whose network targets ``schedule`` names (``default`` when it names only Redis and weir).

    Raises:
        ValueError: it names targets of two sources.
    """
    named = {f.target for f in schedule.faults}
    found = [source for source in SOURCES.values() if named & set(source.network_targets)]
    if len(found) > 1:
        raise ValueError(f"the schedule names targets of several sources: {', '.join(s.name for s in found)}")
    return found[0] if found else default
