"""The networks weir can ingest, each behind the small :class:`~weir.networks.base.Network` interface.

To add a network to weir itself: write its connection actor in ``weir/actors/``, its ``Network``
here, its settings class in ``weir/config.py`` (a section of the same name with an ``enabled``
field), and add it to :data:`NETWORKS`. A program embedding weir adds its own with
:func:`register_network` (docs/embedding.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from weir.config import ConfigError
from weir.networks.base import Network, NetworkContext
from weir.sinks.keys import validate_name

if TYPE_CHECKING:
    from weir.config import Config

#: What builds a network for one run of the service: a ``Network`` class, or any callable with its
#: constructor's signature (e.g. a ``functools.partial`` carrying the network's own settings).
NetworkFactory = Callable[["Config", NetworkContext], Network]

#: name (= its config section) -> "module:class". Imported only when enabled: the Ethereum
#: network's ABI library alone takes ~0.4 s to import, which every restart would pay.
NETWORKS: dict[str, str] = {
    "farcaster": "weir.networks.farcaster:FarcasterNetwork",
    "ethereum": "weir.networks.ethereum:EthereumNetwork",
    "atproto": "weir.networks.atproto:AtprotoNetwork",
}

#: name -> the extra of weir (``pip install 'weir[EXTRA]'``) holding the packages it needs beyond the
#: base install, which carries only the default network's (Farcaster's).
EXTRAS: dict[str, str] = {
    "ethereum": "ethereum",
    "atproto": "atproto",
}


class MissingExtra(ConfigError):
    """An enabled network's packages are not installed; the message names the extra to install."""


# name -> class, for networks registered by a program embedding weir (they have no config section:
# their class's ``enabled(config)`` decides).
_REGISTERED: dict[str, type[Network]] = {}


def register_network(name: str, network: type[Network]) -> type[Network]:
    """Make ``network`` one of the networks the service runs when its ``enabled(config)`` is true.

    ``name`` is the network's source name in Redis keys and must equal ``network.name``.
    Registering the same class again is a no-op; another class under a taken name is refused.

    Raises:
        ValueError: the name is a built-in network's, taken by another class, unfit for a Redis
            key, or not the class's ``name``.
    """
    validate_name("network name", name)
    if getattr(network, "name", None) != name:
        raise ValueError(f"network {name!r}: its class's name is {getattr(network, 'name', None)!r}, not {name!r}")
    if name in NETWORKS:
        raise ValueError(f"network {name!r} is built in; register yours under another name")
    if _REGISTERED.setdefault(name, network) is not network:
        raise ValueError(f"network {name!r} is already registered ({_REGISTERED[name].__qualname__})")
    return network


def unregister_network(name: str) -> None:
    """Forget a network added with :func:`register_network` (built-in ones cannot be removed)."""
    if name in NETWORKS:
        raise ValueError(f"network {name!r} is built in and cannot be unregistered")
    _REGISTERED.pop(name, None)


def network_class(name: str) -> type[Network]:
    """The class of the network called ``name`` (a built-in one is imported now).

    Raises:
        MissingExtra: a built-in network whose extra is not installed.
    """
    if name in _REGISTERED:
        return _REGISTERED[name]
    module, _, attribute = NETWORKS[name].partition(":")
    try:
        imported = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if name not in EXTRAS or missing.partition(".")[0] == "weir":  # weir itself broken: not an extra's
            raise
        raise MissingExtra(f"{name}.enabled: the {name} network's packages are not installed (no module named "
                           f"{missing!r}): pip install 'weir[{EXTRAS[name]}]'") from None
    cls: type[Network] = getattr(imported, attribute)
    return cls


def enabled_networks(config: Config) -> list[type[Network]]:
    """The classes of the networks ``config`` enables: built-in ones in registry order, then the
    registered ones in the order they were registered.

    Raises:
        MissingExtra: an enabled built-in network's extra is not installed.
    """
    built_in = [network_class(name) for name in NETWORKS if getattr(config, name).enabled]
    return built_in + [cls for cls in _REGISTERED.values() if cls.enabled(config)]


__all__ = [
    "EXTRAS",
    "NETWORKS",
    "MissingExtra",
    "Network",
    "NetworkContext",
    "NetworkFactory",
    "enabled_networks",
    "network_class",
    "register_network",
    "unregister_network",
]
