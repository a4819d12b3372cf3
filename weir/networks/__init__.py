"""The networks weir can ingest, each behind the small :class:`~weir.networks.base.Network` interface.

To add a network: write its connection actor in ``weir/actors/``, its ``Network`` here, its
settings class in ``weir/config.py``, and register it in :data:`NETWORKS`.
"""

from __future__ import annotations

from weir.networks.atproto import AtprotoNetwork
from weir.networks.base import Network, NetworkContext
from weir.networks.ethereum import EthereumNetwork
from weir.networks.farcaster import FarcasterNetwork

#: name -> factory(config, context); enabled networks are those whose settings say so.
NETWORKS: dict[str, type[Network]] = {
    FarcasterNetwork.name: FarcasterNetwork,
    EthereumNetwork.name: EthereumNetwork,
    AtprotoNetwork.name: AtprotoNetwork,
}

__all__ = ["NETWORKS", "Network", "NetworkContext"]
