"""The ``weir`` console script: parse options, build the Config, and enter trio.

Commands: ``run`` (the service), ``demo`` (simulator + pipeline + embedded Redis, with progress),
``tail`` (print persisted events as JSON lines), ``chaos`` (the fault scenarios: weir/chaos/suite.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import signal
import sys
import textwrap
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from weir import __version__, entry
from weir.config import Config, ConfigError, environment_variables, load_config, require_a_network
from weir.logs import configure_logging
from weir.redact import redact_text
from weir.sinks.embedded_redis import EmbeddedRedisError
from weir.sinks.keys import validate_name

log = logging.getLogger("weir.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line: ``weir demo: argument --events: …; see weir demo --help``."""

    def error(self, message: str) -> Any:  # argparse's NoReturn; exits 2 like every usage error here
        self.exit(EXIT_USAGE, f"{self.prog}: {message}; see {self.prog} --help\n")


def _integer(minimum: int, expected: str) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``, else a usage error saying ``expected``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a rate in events/s, 0 (as fast as possible) or more, got {text!r}")
    return value


def _key_part(what: str) -> Callable[[str], str]:
    """An argparse type: a source or partition name that can be part of a Redis key (weir/sinks/keys.py)."""

    def parse(text: str) -> str:
        try:
            return validate_name(what, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _output_file(text: str) -> str:
    """An argparse type for a file written at the end of a long run: refused now if it cannot be written."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory")
    if not path.absolute().parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: no directory {str(path.absolute().parent)!r}")
    return text


def _directory(text: str) -> str:
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    return text


_positive = _integer(1, "a positive integer")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="TOML configuration file (default: none)")
    parser.add_argument("--redis-url", metavar="URL", help="use this Redis instead of the embedded one (redis.url)")
    parser.add_argument("--data-dir", metavar="DIR", help="embedded Redis data directory (redis.data_dir)")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        help="override any setting, e.g. --set batch.max_events=1000 (repeatable)")
    parser.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR (log_level)")
    parser.add_argument("--log-format", metavar="FORMAT", help="auto, text or json (log_format)")


def _settings_epilog() -> str:
    """Where settings come from, and every environment variable (generated from weir.config)."""
    lines = ["settings, each overriding the one before: built-in defaults < --config FILE < WEIR_* environment",
             "variables < --set SECTION.KEY=VALUE and the named flags above (docs: README.md, Configuration).",
             "", "environment variables (WEIR_<SECTION>_<KEY>; lists comma-separated or JSON):"]
    for section, names in environment_variables().items():
        lines.extend(textwrap.wrap(", ".join(names), width=100, initial_indent=f"  {section or 'top level'}: ",
                                   subsequent_indent="    ", break_on_hyphens=False))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="weir", description="Lossless ingestion of decentralised network streams into Redis.")
    parser.add_argument("--version", action="version", version=f"weir {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the ingestion service", epilog=_settings_epilog(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_options(run)
    run.add_argument("--farcaster-url", metavar="URL", help="Snapchain node, http://host:port or https://host:port (farcaster.url)")
    run.add_argument("--shards", metavar="N,N", help="user shards to ingest; default: all, from GetInfo (farcaster.shards)")

    demo = commands.add_parser("demo", help="a simulated network -> weir -> embedded Redis, with live progress")
    _add_config_options(demo)
    demo.add_argument("--network", choices=("farcaster", "atproto"), default="farcaster",
                      help="farcaster (Snapchain gRPC, default) or atproto (the relay firehose)")
    demo.add_argument("--events", type=_positive, default=20_000, metavar="N", help="events per shard (Farcaster) or in all (AT Protocol) the simulator offers (default 20000)")
    demo.add_argument("--shards", type=_positive, default=2, metavar="N", help="simulated user shards (default 2)")
    demo.add_argument("--rate", type=_rate, default=5_000.0, metavar="R", help="events/s per shard, 0 = as fast as possible (default 5000)")
    demo.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    demo.add_argument("--deliver", choices=("parquet",), default=None,
                      help="also deliver the events inside the service (deliver.with_run): parquet files (needs weir[parquet])")
    demo.add_argument("--deliver-dir", metavar="DIR", default=None,
                      help="where --deliver parquet writes (default: parquet/ inside the demo's data directory)")

    tail = commands.add_parser("tail", help="print persisted events from Redis as JSON lines")
    _add_config_options(tail)
    tail.add_argument("--source", type=_key_part("source"), default="farcaster", help="source name (default farcaster)")
    tail.add_argument("--partition", type=_key_part("partition"), default=None, help="partition (shard); default: every partition found")
    tail.add_argument("--count", type=_integer(0, "0 (all) or a positive integer"), default=10, metavar="N", help="last N events per partition (default 10); 0 = all")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    tail.add_argument("--raw", action="store_true", help="print entry fields only, without decoding the payload")

    deliver = commands.add_parser(
        "deliver", help="deliver the persisted streams downstream (Parquet files), each entry effectively once",
        description="Read the partition streams weir writes through Redis consumer groups and deliver them to the "
                    "targets of the [[deliver.pipelines]] tables (docs/delivery.md). Several instances with the same "
                    "group share the work. Without redis.url it reads the embedded Redis of a `weir run` with the "
                    "same redis.data_dir. Its /metrics, /healthz and /readyz follow [metrics] (give it a metrics.port "
                    "other than a `weir run`'s on the same host).",
        epilog=_settings_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_options(deliver)
    deliver.add_argument("--consumer", metavar="NAME", help="this instance's consumer name (deliver.consumer; "
                                                            "default <hostname>-<pid>)")

    # The engine is weir/chaos/suite.py, imported only when this command runs (it is heavy).
    chaos = commands.add_parser("chaos", help="run the chaos suite: fault scenarios, table, verdict")
    chaos.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="named scenarios to run, or 'all' (default: all, unless --random or --schedule is given; see --list)")
    chaos.add_argument("--list", action="store_true", help="list the named scenarios and exit")
    chaos.add_argument("--scenarios-file", metavar="PATH",
                       help="your own scenarios (a Python file defining registry()), added to the built-in ones "
                            "(default: ./chaos/scenarios.py if it exists)")
    chaos.add_argument("--random", type=_integer(0, "0 or a positive integer"), default=0, metavar="N", help="also run N generated fault schedules (default 0)")
    chaos.add_argument("--seed", type=int, default=1, metavar="S", help="seed of the generated schedules (default 1)")
    chaos.add_argument("--schedule", action="append", default=[], metavar="JSON",
                       help="run this fault schedule (the JSON line a failed run printed); repeatable")
    chaos.add_argument("--source", choices=("farcaster", "firehose", "jetstream", "ethereum"), default=None,
                       help="the network of --random and --schedule runs (default: --random cycles through every "
                            "source; a --schedule runs against the source its targets name)")
    chaos.add_argument("--json", type=_output_file, metavar="PATH", help="also write the results as JSON to PATH")
    chaos.add_argument("--workdir", type=_directory, metavar="DIR", help="keep every run's files (weir log, Redis data) under DIR")
    return parser


# The named flags and the setting each one sets.
_NAMED_FLAGS = {
    "redis_url": "redis.url",
    "data_dir": "redis.data_dir",
    "log_level": "log_level",
    "log_format": "log_format",
    "farcaster_url": "farcaster.url",
    "shards": "farcaster.shards",
    "consumer": "deliver.consumer",
}


def _config_from(args: argparse.Namespace) -> Config:
    overrides: dict[str, str] = {}
    origins: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or ("." not in key and key.strip() not in ("log_level", "log_format")):
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE (or log_level=, log_format=)")
        overrides[key.strip()] = value
        origins[key.strip()] = "command line --set"
    for attribute, key in _NAMED_FLAGS.items():
        value = getattr(args, attribute, None)
        if value is None or (attribute == "shards" and args.command != "run"):  # demo's --shards is its own
            continue
        overrides[key] = str(value)
        origins[key] = "command line --" + attribute.replace("_", "-")
    return load_config(args.config, overrides=overrides, origins=origins)


def _run_trio(config: Config, fn: Callable[..., Any], *args: Any) -> int:
    """``trio.run(fn, *args)``; the embedded Redis failing to start is one line, not a traceback."""
    failure: BaseException | None = None
    problem: BaseException | None = None
    try:
        return trio.run(fn, *args)
    except* ConfigError as group:  # found once running (weir deliver: no partition stream yet)
        problem = _first_leaf(group)
    except* EmbeddedRedisError as group:
        failure = _first_leaf(group)
    if problem is not None:
        print(f"weir: config error: {redact_text(str(problem))}", file=sys.stderr)
        return EXIT_USAGE
    print(f"weir: cannot start the embedded Redis (redis.data_dir {config.redis.data_dir!r}): {redact_text(str(failure))}",
          file=sys.stderr)
    return EXIT_FAILURE


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("run", "deliver"):  # only the services drain on a signal; the rest stop as usual
        entry.release()
    if args.command == "chaos":
        try:
            from weir.chaos.suite import main as chaos_main
        except ModuleNotFoundError as exc:  # the suite runs every network's simulator
            if (exc.name or "").partition(".")[0] == "weir":
                raise
            print(f"weir: chaos: the chaos suite needs every network's packages (no module named {exc.name!r}): "
                  "pip install 'weir[all]'", file=sys.stderr)
            return EXIT_USAGE
        return chaos_main(args)
    try:
        config = _config_from(args)
        # The networks to run (the demo's: its simulator's) are imported now: one whose extra is not
        # installed is a config error naming the pip command, before any Redis or simulator starts.
        if args.command == "run":
            from weir.networks import enabled_networks

            require_a_network(config)
            enabled_networks(config)
            if config.deliver.with_run and config.deliver.pipelines:
                _require_deliver_packages(config)
        if args.command == "demo":
            from weir.networks import network_class

            network_class(args.network)
            if args.deliver is not None:
                _require_target_packages([args.deliver])
        if args.command == "deliver":
            _require_deliver_packages(config)
    except ConfigError as exc:
        print(f"weir: config error: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    level = config.log_level
    if args.command == "demo" and args.log_level is None and "WEIR_LOG_LEVEL" not in os.environ:
        level = "WARNING"  # the demo's output is its progress line; logs only when something goes wrong
    configure_logging(level, config.log_format)
    if args.command == "run":
        from weir.collector import freeze_startup_heap

        freeze_startup_heap()  # after the imports: what they built is never walked again
        return run_until_signalled(config, on_started=_live_progress(config))
    if args.command == "deliver":
        from weir.deliver.collector import tune_for_batches
        from weir.deliver.service import serve_deliver

        tune_for_batches()  # after the imports: what they built is frozen
        return _run_trio(config, functools.partial(serve_until_signalled, config, serve=serve_deliver))
    if args.command == "demo":
        from weir.demo import run_demo

        return _run_trio(config, run_demo, config, args)
    if args.command == "tail":
        from weir.tail import run_tail

        return _run_trio(config, run_tail, config, args)
    raise AssertionError(args.command)


def _require_deliver_packages(config: Config) -> None:
    """A delivery pipeline to run, and its target's packages (an optional extra) installed."""
    if not config.deliver.pipelines:
        raise ConfigError("deliver.pipelines: no delivery pipeline is configured: add a [[deliver.pipelines]] "
                          "table (docs/delivery.md)")
    _require_target_packages([pipe.target for pipe in config.deliver.pipelines])


def _require_target_packages(targets: Sequence[str]) -> None:
    """The packages (an optional extra) of every target kind in ``targets`` installed."""
    if "parquet" in targets:
        try:
            import pyarrow  # noqa: F401
        except ModuleNotFoundError:
            raise ConfigError("deliver.pipelines: the parquet target needs pyarrow: pip install 'weir[parquet]'") from None
    if "nats" in targets:
        try:
            import nats  # noqa: F401
        except ModuleNotFoundError:
            raise ConfigError("deliver.pipelines: the nats target needs nats-py: pip install 'weir[nats]'") from None
    if "webhook" in targets:
        try:
            import httpx  # noqa: F401
        except ModuleNotFoundError:
            raise ConfigError("deliver.pipelines: the webhook target needs httpx: pip install 'weir[webhook]'") from None


def _live_progress(config: Config) -> Callable[..., Awaitable[None]] | None:
    """``weir run``'s live progress line, when stderr is a terminal (and ``progress.terminal``)."""
    if not (config.progress.terminal and sys.stderr.isatty()):
        return None
    from weir.live_line import LiveLine
    from weir.observability.progress_report import show_live_progress

    async def show(service: Any, stopping: trio.Event) -> None:
        await show_live_progress(service.partitions, LiveLine(sys.stderr, tty=True))

    return show


def run_until_signalled(config: Config, **serve_options: Any) -> int:
    """Run the service in this thread (the main one) until SIGINT or SIGTERM, as ``weir run`` does.

    The first signal drains and stops; a second one stops at once. ``serve_options`` are
    :func:`weir.app.serve`'s (``event_filter``, ``networks``).

    Returns:
        ``weir run``'s exit status: 0 after an ordered stop, 130 after a second signal, 1 if the
        service gave up, ``weir.errors.EXIT_FATAL`` on a fatal error (logged).
    """
    return _run_trio(config, functools.partial(serve_until_signalled, config, **serve_options))


async def serve_until_signalled(config: Config, *, on_started=None, serve=None, **serve_options: Any) -> int:
    """Run the service; first SIGINT/SIGTERM drains and exits 0, a second one exits at once.

    ``serve``: the service to run (default :func:`weir.app.serve`; ``weir deliver`` passes its own).
    """
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            return await _serve_with_signals(config, signals, on_started, serve_options, serve)
    finally:
        entry.release()  # trio put back the start-up handler: signals from now on act as usual


async def _serve_with_signals(config: Config, signals: Any, on_started: Any, serve_options: dict[str, Any],
                              serve: Any = None) -> int:
    if serve is None:
        from weir.app import serve
    from weir.errors import EXIT_FATAL, fatal_in
    from weir.supervision import SupervisorEscalation

    stopping = trio.Event()
    interrupted = False
    failed = False
    fatal: BaseException | None = None
    early = [signal.Signals(signum).name for signum in entry.take_pending()]
    if len(early) > 1:  # twice while still importing: "now", as a second signal always means
        log.warning("second %s (during start-up): exiting at once", early[-1],
                    extra={"event": "shutdown_now", "signal": early[-1]})
        return EXIT_INTERRUPTED
    for name in early:  # came while weir was still importing: an ordered stop, at once
        log.info("%s (during start-up): stopping (drain, flush, checkpoint)", name,
                 extra={"event": "shutdown", "signal": name})
        stopping.set()
    try:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                nonlocal interrupted
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not stopping.is_set():
                        log.info("%s: stopping (drain, flush, checkpoint); send it again to exit at once", name,
                                 extra={"event": "shutdown", "signal": name})
                        stopping.set()
                    else:
                        log.warning("second %s: exiting at once (the persisted cursor keeps the data safe)", name,
                                    extra={"event": "shutdown_now", "signal": name})
                        interrupted = True
                        nursery.cancel_scope.cancel()
                        return

            async def serve_then_stop_watching(task_status=trio.TASK_STATUS_IGNORED) -> None:
                try:
                    await serve(config, stopping=stopping, task_status=task_status, **serve_options)
                finally:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            service = await nursery.start(serve_then_stop_watching)
            if on_started is not None and service is not None:
                nursery.start_soon(on_started, service, stopping)
    except* SupervisorEscalation as group:
        fatal = fatal_in(group)
        if fatal is not None:  # one line an operator can act on, and a distinct exit code
            log.error("fatal: %s", fatal, extra={"event": "fatal", "error": f"{type(fatal).__name__}: {fatal}"})
        else:
            log.error("giving up: %s", group.exceptions[0])
        failed = True
    if failed:
        return EXIT_FATAL if fatal is not None else EXIT_FAILURE
    if interrupted:
        return EXIT_INTERRUPTED
    log.info("stopped cleanly", extra={"event": "stopped"})
    return EXIT_OK


def print_json(entry: dict) -> None:
    sys.stdout.write(json.dumps(entry, ensure_ascii=False) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
