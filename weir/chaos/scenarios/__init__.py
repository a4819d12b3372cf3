"""The scenarios weir ships, one module per source (:mod:`weir.chaos.scenarios.farcaster`,
:mod:`weir.chaos.scenarios.atproto`, :mod:`weir.chaos.scenarios.ethereum`), plus the delivery ones
(:mod:`weir.chaos.scenarios.delivery`: ``weir deliver`` beside ``weir run``).

A source's scenarios are plain data (:class:`~weir.chaos.scenario.Scenario` values); a new source
adds its module here and its list to :func:`builtin`. A user's own scenarios are loaded from a
file instead (:mod:`weir.chaos.registry`).
"""

from __future__ import annotations

from weir.chaos.scenario import Scenario
from weir.chaos.scenarios import atproto, delivery, ethereum, farcaster

__all__ = ["builtin"]


def builtin() -> list[Scenario]:
    """Every built-in scenario, in the order ``weir chaos`` runs them."""
    return [*farcaster.scenarios(), *atproto.scenarios(), *ethereum.scenarios(), *delivery.scenarios()]
