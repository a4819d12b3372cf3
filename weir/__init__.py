"""weir: supervised, lossless ingestion of decentralised network event streams into Redis.

The Python API (docs/embedding.md)::

    import weir

    config = weir.load_config(overrides={"farcaster.fids": "3,194"})  # or weir.Config(...)
    weir.run(config, event_filter=lambda event: event.kind == "MERGE_MESSAGE")  # like `weir run`

or, inside a trio program, ``await nursery.start(functools.partial(weir.serve, config, ...))``.

Names are imported on first use, not by ``import weir``: the console script must take SIGTERM
before its heavy dependencies load (weir/entry.py), and a program that only builds a Config
should not pay for trio-asyncio, redis or eth-abi.
"""

# No imports at all here, not even typing (~2 ms): `import weir` is on the console script's path
# to its SIGTERM handler.
TYPE_CHECKING = False

__version__ = "0.1.0"

# public name -> "module:attribute"
_EXPORTS: dict[str, str] = {
    "Config": "weir.config:Config",
    "ConfigError": "weir.config:ConfigError",
    "load_config": "weir.config:load_config",
    "serve": "weir.app:serve",
    "Service": "weir.app:Service",
    "run": "weir.cli:run_until_signalled",
    "configure_logging": "weir.logs:configure_logging",
    "Event": "weir.events:Event",
    "Chunk": "weir.events:Chunk",
    "DeadLetter": "weir.events:DeadLetter",
    "Network": "weir.networks.base:Network",
    "NetworkContext": "weir.networks.base:NetworkContext",
    "register_network": "weir.networks:register_network",
    "unregister_network": "weir.networks:unregister_network",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports on demand
    from weir.app import Service, serve
    from weir.cli import run_until_signalled as run
    from weir.config import Config, ConfigError, load_config
    from weir.events import Chunk, DeadLetter, Event
    from weir.logs import configure_logging
    from weir.networks import register_network, unregister_network
    from weir.networks.base import Network, NetworkContext


def __getattr__(name: str) -> object:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'weir' has no attribute {name!r}")
    from importlib import import_module

    module, _, attribute = target.partition(":")
    value = getattr(import_module(module), attribute)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
