"""``python -m weir.sim ethereum [options]``: the simulated Ethereum node as a process (until SIGTERM/SIGINT).

Prints ``weir-sim ethereum listening on HOST:PORT`` once it serves. SIGUSR1 drops every connection.
SIGUSR2 reads the ``--control`` file, one JSON object naming what to do now (the chaos suite writes
it): ``{"reorg": N}`` replaces the top N blocks by a longer branch and pushes it, ``{"lag": N}``
serves the chain only up to N blocks below its head until ``{"catch_up": true}``, ``{"mute": true}``
silences the current head subscriptions, ``{"refuse": true|false}`` refuses new connections (503),
``{"forge_head": N}`` pushes a head numbered N that is no block of the chain (a child of the tip).
On exit with ``--record PATH`` it writes the final canonical chain (``[[block hash, log index], ...]``
and the head) as JSON, for checkers in other processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import TYPE_CHECKING

from weir.files import write_atomically

if TYPE_CHECKING:  # imported when run: `python -m weir.sim`'s parser lists this network without its extra
    from weir.sim.ethereum import EthereumSim, EthereumSimConfig


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("", "none") else int(text)


def add_parser(networks: argparse._SubParsersAction) -> None:
    eth = networks.add_parser("ethereum", help="an Ethereum node (JSON-RPC over WebSocket, with reorgs)")
    eth.add_argument("--host", default="127.0.0.1")
    eth.add_argument("--port", type=int, default=0, help="0 = any free port (printed)")
    eth.add_argument("--chain-id", type=int, default=1337)
    eth.add_argument("--seed", type=int, default=1)
    eth.add_argument("--block-time", type=float, default=1.0)
    eth.add_argument("--logs-per-block", type=int, default=4)
    eth.add_argument("--history", type=int, default=0)
    eth.add_argument("--blocks", type=_optional_int, default=None, help="blocks produced, then idle")
    eth.add_argument("--reorg-every", type=int, default=0)
    eth.add_argument("--min-reorg-depth", type=int, default=1)
    eth.add_argument("--max-reorg-depth", type=int, default=3)
    eth.add_argument("--max-logs", type=int, default=10_000)
    eth.add_argument("--drop-every", type=int, default=0)
    eth.add_argument("--contracts", type=int, default=3)
    eth.add_argument("--malformed-log-every", type=int, default=0, help="about one log in N is malformed (persistently)")
    eth.add_argument("--malformed-header-every", type=int, default=0, help="every N-th header served is malformed (once)")
    eth.add_argument("--max-range", type=int, default=0, help="eth_getLogs refuses ranges of more blocks than this (0: no cap)")
    eth.add_argument("--lagging-backend", type=int, default=0,
                     help="every second connection is served by a backend this many blocks behind")
    eth.add_argument("--control", default="", help="file read on SIGUSR2: a JSON command (see the module docstring)")
    eth.add_argument("--reannounce", type=int, default=0, help="push the last N heads again after every subscribe")
    eth.add_argument("--live-after-connect", action="store_true", help="hold production (after --history) until a client connects")
    eth.add_argument("--record", default="", help="write the final canonical chain here on exit")
    eth.add_argument("--log-level", default="WARNING")


def config_from_args(args: argparse.Namespace) -> EthereumSimConfig:
    from weir.sim.ethereum import EthereumSimConfig

    return EthereumSimConfig(
        chain_id=args.chain_id, seed=args.seed, block_time=args.block_time, logs_per_block=args.logs_per_block,
        history=args.history, blocks=args.blocks, reorg_every=args.reorg_every, min_reorg_depth=args.min_reorg_depth,
        max_reorg_depth=args.max_reorg_depth, max_logs=args.max_logs, drop_every=args.drop_every, contracts=args.contracts,
        malformed_log_every=args.malformed_log_every, malformed_header_every=args.malformed_header_every,
        reannounce=args.reannounce, max_range=args.max_range, lagging_backend=args.lagging_backend,
        live_after_connect=args.live_after_connect,
    )


def apply_control(sim: EthereumSim, path: str) -> None:
    """Do what the control file says (see the module docstring); a bad file is logged, not fatal."""
    try:
        with open(path, encoding="utf-8") as handle:
            command = json.load(handle)
        if "reorg" in command:
            sim._announce(sim.chain.reorg(int(command["reorg"])))
        if "lag" in command:
            sim.lag(sim.chain.head_number - int(command["lag"]))
        if command.get("catch_up"):
            sim.catch_up()
        if command.get("mute"):
            sim.mute_heads()
        if "refuse" in command:
            sim.refusing = bool(command["refuse"])
        if "forge_head" in command:
            sim.forge_head(int(command["forge_head"]))
    except (OSError, ValueError, TypeError) as exc:
        logging.getLogger("weir.sim").error("control file %s: %s", path, exc)


def main(args: argparse.Namespace) -> int:
    import trio

    from weir.sim.ethereum import serve_ethereum_sim

    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"weir-sim: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2) as signals:
            async with trio.open_nursery() as nursery:
                sim = await nursery.start(serve_ethereum_sim, config, args.host, args.port)
                print(f"weir-sim ethereum listening on {args.host}:{sim.port}", flush=True)
                try:
                    async for signum in signals:
                        if signum == signal.SIGUSR1:
                            sim.drop_connections()
                            continue
                        if signum == signal.SIGUSR2:
                            if args.control:
                                apply_control(sim, args.control)
                            continue
                        break
                finally:
                    if args.record:
                        # whole or not at all: a checker polls for the file
                        write_atomically(args.record, json.dumps({
                            "head": sim.chain.head_number, "logs": sim.chain.canonical_logs(),
                            "blocks": sim.chain.canonical, "reorgs": sim.chain.reorgs,
                            "parents": {h: header["parentHash"] for h, header in sim.chain.headers.items()},
                        }).encode())
                    nursery.cancel_scope.cancel()

    trio.run(run)
    return 0
