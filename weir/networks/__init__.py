"""The networks weir can ingest, each behind the small :class:`~weir.networks.base.Network` interface.

To add a network: write its connection actor in ``weir/actors/``, its ``Network`` here, its
settings class in ``weir/config.py`` (a section of the same name with an ``enabled`` field), and
register it in :data:`NETWORKS`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from weir.networks.base import Network, NetworkContext

if TYPE_CHECKING:
    from weir.config import Config

#: name (= its config section) -> "module:class". Imported only when enabled: the Ethereum
#: network's ABI library alone takes ~0.4 s to import, which every restart would pay.
NETWORKS: dict[str, str] = {
    "farcaster": "weir.networks.farcaster:FarcasterNetwork",
    "ethereum": "weir.networks.ethereum:EthereumNetwork",
    "atproto": "weir.networks.atproto:AtprotoNetwork",
}


def network_class(name: str) -> type[Network]:
    module, _, attribute = NETWORKS[name].partition(":")
    cls: type[Network] = getattr(importlib.import_module(module), attribute)
    return cls


def enabled_networks(config: Config) -> list[type[Network]]:
    """The classes of the networks ``config`` enables, in registry order."""
    return [network_class(name) for name in NETWORKS if getattr(config, name).enabled]


__all__ = ["NETWORKS", "Network", "NetworkContext", "enabled_networks", "network_class"]
