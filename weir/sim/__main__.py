"""``python -m weir.sim snapchain [options]``: run a simulated network until SIGTERM/SIGINT.

Prints exactly one line, ``weir-sim snapchain listening on HOST:PORT``, once it is serving (the
readiness signal ``weir.sim.process`` waits for); logs go to stderr. Chaos control (used by
``weir.chaos.processes``): SIGUSR1 drops every open stream; SIGUSR2 reads the ``--control`` file
(a gRPC status name: answer every new call with it; empty: serve normally), or without one
toggles answering every new call with UNAVAILABLE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from grpclib.const import Status

from weir.files import write_atomically
from weir.sim.farcaster_data import FRAMINGS, SnapchainSimConfig, offered_digest
from weir.sim.snapchain import SnapchainSim, serve_snapchain


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("", "none") else int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m weir.sim", description=__doc__.splitlines()[0])
    networks = parser.add_subparsers(dest="network", required=True)
    snap = networks.add_parser("snapchain", help="a Farcaster Snapchain node (gRPC HubService)")
    snap.add_argument("--host", default="127.0.0.1")
    snap.add_argument("--port", type=int, default=0, help="0 = any free port (printed)")
    snap.add_argument("--shards", type=int, default=2)
    snap.add_argument("--seed", type=int, default=1)
    snap.add_argument("--rate", type=float, default=1000.0, help="events/s per shard; 0 = as fast as possible")
    snap.add_argument("--history", type=int, default=0, help="events per shard that exist at start")
    snap.add_argument("--total", type=_optional_int, default=None, help="events per shard, then idle")
    snap.add_argument("--retention", type=_optional_int, default=None, help="events kept per shard")
    snap.add_argument("--corrupt-every", type=_optional_int, default=None)
    snap.add_argument("--fids-per-shard", type=int, default=200)
    snap.add_argument("--max-block-events", type=int, default=40)
    snap.add_argument("--pregenerate", action="store_true", help="generate all --total events before serving")
    snap.add_argument("--framing", choices=FRAMINGS, default="packed",
                      help="Subscribe messages per HTTP/2 DATA frame: packed (many, as a node catching a subscriber up) or one")
    snap.add_argument("--live-after-subscribe", action="store_true",
                      help="hold live production (after --history) until the first Subscribe")
    snap.add_argument("--record", default="", help="file written at exit: the ids (and a digest) of every event offered")
    snap.add_argument("--control", default="", help="file read on SIGUSR2: a gRPC status name to fail calls with, or empty")
    snap.add_argument("--log-level", default="WARNING")
    from weir.sim import atproto_main, ethereum_main

    atproto_main.add_parser(networks)

    ethereum_main.add_parser(networks)
    return parser


def config_from_args(args: argparse.Namespace) -> SnapchainSimConfig:
    return SnapchainSimConfig(
        shards=args.shards,
        seed=args.seed,
        rate=args.rate,
        history=args.history,
        total=args.total,
        retention=args.retention,
        corrupt_every=args.corrupt_every,
        fids_per_shard=args.fids_per_shard,
        max_block_events=args.max_block_events,
        pregenerate=args.pregenerate,
        framing=args.framing,
        live_after_subscribe=args.live_after_subscribe,
    )


def write_record(sim: SnapchainSim, path: str) -> None:
    """What the simulator offered, per shard: every released id in order and a SHA-256 over their
    HubEvent bytes (written whole or not at all: a reader never sees half of it)."""
    record = {}
    for shard in sim.logs:
        offered = sim.offered(shard)
        record[str(shard)] = {"ids": [event_id for event_id, _ in offered], "sha256": offered_digest(offered)}
    write_atomically(path, json.dumps(record).encode("ascii"))


async def _run_snapchain(config: SnapchainSimConfig, host: str, port: int, control: str = "", record: str = "") -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sim, bound = await serve_snapchain(config, host, port)
    failing = False

    def toggle_error() -> None:
        nonlocal failing
        if control:  # the harness wrote the status it wants (any name grpclib knows) before signalling
            with open(control, encoding="ascii") as handle:
                name = handle.read().strip()
            try:
                sim.set_error(Status[name] if name else None)
            except KeyError:
                logging.getLogger("weir.sim").error("control file %s: unknown gRPC status %r", control, name)
            return
        failing = not failing
        sim.set_error(Status.UNAVAILABLE if failing else None)

    loop.add_signal_handler(signal.SIGUSR1, sim.drop_streams)  # chaos control, see the docstring
    loop.add_signal_handler(signal.SIGUSR2, toggle_error)
    try:
        print(f"weir-sim snapchain listening on {host}:{bound}", flush=True)
        await stop.wait()
    finally:
        sim.close()
        if record:  # before wait_closed, which may wait on connections a client still holds
            write_record(sim, record)
        await sim.wait_closed()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    if args.network == "atproto":
        from weir.sim import atproto_main

        return atproto_main.main(args)
    if args.network == "ethereum":
        from weir.sim import ethereum_main

        return ethereum_main.main(args)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"weir-sim: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_run_snapchain(config, args.host, args.port, args.control, args.record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
