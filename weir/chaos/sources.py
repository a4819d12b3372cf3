"""The networks the chaos suite can drive, by name: what ``--random`` cycles through and what a
replayed ``--schedule`` runs against (the source whose targets its faults name)."""

from __future__ import annotations

from weir.chaos.atproto import FIREHOSE, JETSTREAM
from weir.chaos.ethereum import ETHEREUM
from weir.chaos.farcaster import FARCASTER
from weir.chaos.schedule import Schedule
from weir.chaos.source import ChaosSource

__all__ = ["SOURCES", "source_key", "source_of"]

#: By the name ``weir chaos --source`` takes (the firehose and Jetstream are both weir's
#: ``atproto`` source, with the same targets).
SOURCES: dict[str, ChaosSource] = {"farcaster": FARCASTER, "firehose": FIREHOSE, "jetstream": JETSTREAM,
                                   "ethereum": ETHEREUM}


def source_key(source: ChaosSource) -> str | None:
    """The :data:`SOURCES` name of ``source`` (None: a source of a user's own)."""
    return next((key for key, known in SOURCES.items() if known == source), None)


def source_of(schedule: Schedule, default: ChaosSource = FARCASTER) -> ChaosSource:
    """The source whose network targets ``schedule`` names (``default`` when it names only Redis and weir).

    Raises:
        ValueError: its targets fit several sources (those of two networks, or the firehose's and
            Jetstream's, which are the same): ``--source`` must say which.
    """
    named = {f.target for f in schedule.faults}
    found = [key for key, source in SOURCES.items() if named & set(source.network_targets)]
    if len(found) > 1:
        raise ValueError(f"the schedule's targets fit several sources ({', '.join(found)}): give --source")
    return SOURCES[found[0]] if found else default
