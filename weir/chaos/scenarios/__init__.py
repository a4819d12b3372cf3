"""The scenarios weir ships, one module per source (:mod:`weir.chaos.scenarios.farcaster`,
:mod:`weir.chaos.scenarios.atproto`).

A source's scenarios are plain data (:class:`~weir.chaos.scenario.Scenario` values); a new source
adds its module here and its list to :func:`builtin`. A user's own scenarios are loaded from a
file instead (:mod:`weir.chaos.registry`).
"""

from __future__ import annotations

from weir.chaos.atproto import FIREHOSE, JETSTREAM
from weir.chaos.farcaster import FARCASTER
from weir.chaos.scenario import Scenario
from weir.chaos.scenarios import atproto, farcaster
from weir.chaos.source import ChaosSource

__all__ = ["SOURCES", "builtin"]

#: The networks generated and given schedules run against (``weir chaos --source NAME``).
SOURCES: dict[str, ChaosSource] = {"farcaster": FARCASTER, "firehose": FIREHOSE, "jetstream": JETSTREAM}


def builtin() -> list[Scenario]:
    """Every built-in scenario, in the order ``weir chaos`` runs them."""
    return [*farcaster.scenarios(), *atproto.scenarios()]
