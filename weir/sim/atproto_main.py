"""``python -m weir.sim atproto [options]``: the simulated relay and Jetstream server as a process (until SIGTERM/SIGINT).

Prints ``weir-sim atproto listening on HOST:PORT`` once it serves. SIGUSR1 closes every connection.
SIGUSR2 reads the ``--control`` file, one JSON object naming what to do now (the chaos suite writes
it): ``{"drop": true}`` closes every connection, ``{"error": NAME, "message": TEXT}`` sends every
firehose client an error frame and closes it (``ConsumerTooSlow``, ``FutureCursor``, …),
``{"info": NAME, "message": TEXT}`` sends every firehose client an ``#info`` frame
(``OutdatedCursor``). On exit with ``--record PATH`` it writes what it offered
(:meth:`~weir.sim.atproto.AtprotoSim.record`) as JSON, for checkers in other processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
from typing import TYPE_CHECKING, Any

from weir.files import write_atomically

if TYPE_CHECKING:  # imported when run: `python -m weir.sim`'s parser lists this network without its extra
    from weir.sim.atproto import AtprotoSim
    from weir.sim.atproto_data import AtprotoSimConfig

log = logging.getLogger("weir.sim")


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("", "none") else int(text)


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def add_parser(networks: argparse._SubParsersAction) -> None:
    at = networks.add_parser("atproto", help="an AT Protocol relay (firehose) and Jetstream server (WebSocket)")
    at.add_argument("--host", default="127.0.0.1")
    at.add_argument("--port", type=int, default=0, help="0 = any free port (printed)")
    at.add_argument("--seed", type=int, default=1)
    at.add_argument("--total", type=int, default=1000, help="events in the history")
    at.add_argument("--rate", type=float, default=0.0, help="events/s released; 0 = all at once")
    at.add_argument("--dids", type=int, default=40)
    at.add_argument("--corrupt-every", type=_optional_int, default=None)
    at.add_argument("--drop-after", type=_optional_int, default=None, help="ConsumerTooSlow after N frames per connection")
    at.add_argument("--reject-first", type=int, default=0, help="answer the first N handshakes with HTTP 429")
    at.add_argument("--exclusive-replay", action="store_true", help="replay after the cursor, not from it")
    at.add_argument("--history", type=int, default=0, help="with --rate: events that exist at the start")
    at.add_argument("--reorder-at-cutover", type=int, default=0,
                    help="Jetstream: send N live messages before the last N replayed ones on every connection with a cursor")
    at.add_argument("--duplicate-at-cutover", type=int, default=0,
                    help="Jetstream: send the last N replayed messages again after the cutover")
    at.add_argument("--ops-per-commit", type=_int_list, default=(1, 1, 1, 2, 3), metavar="N,N,...",
                    help="each commit's op count is drawn from these (default 1,1,1,2,3)")
    at.add_argument("--time-step-us", type=int, default=1000, help="µs of time_us between events (at least 1000)")
    at.add_argument("--control", default="", help="file read on SIGUSR2: a JSON command (see the module docstring)")
    at.add_argument("--record", default="", help="write what was offered here on exit")
    at.add_argument("--log-level", default="WARNING")


def config_from_args(args: argparse.Namespace) -> AtprotoSimConfig:
    from weir.sim.atproto_data import AtprotoSimConfig

    return AtprotoSimConfig(
        seed=args.seed, total=args.total, rate=args.rate, dids=args.dids, corrupt_every=args.corrupt_every,
        drop_after=args.drop_after, reject_first=args.reject_first, inclusive_replay=not args.exclusive_replay,
        history=args.history, reorder_at_cutover=args.reorder_at_cutover, duplicate_at_cutover=args.duplicate_at_cutover,
        ops_per_commit=args.ops_per_commit, time_step_us=args.time_step_us,
    )


def apply_control(sim: AtprotoSim, path: str) -> None:
    """Do what the control file says (see the module docstring); a bad file is logged, not fatal."""
    try:
        with open(path, encoding="utf-8") as handle:
            command: dict[str, Any] = json.load(handle)
        if command.get("drop"):
            sim.drop_connections()
        if "error" in command:
            sim.send_error(str(command["error"]), str(command.get("message", "")))
        if "info" in command:
            sim.send_info(str(command["info"]), str(command.get("message", "")))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.error("control file %s: %s", path, exc)


def main(args: argparse.Namespace) -> int:
    import trio

    from weir.sim.atproto import AtprotoSim

    config = config_from_args(args)

    async def run() -> None:
        sim = AtprotoSim(config)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2) as signals:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(sim.serve, args.host, args.port)
                print(f"weir-sim atproto listening on {args.host}:{bound}", flush=True)
                try:
                    async for signum in signals:
                        if signum == signal.SIGUSR1:
                            sim.drop_connections()
                        elif signum == signal.SIGUSR2:
                            if args.control:
                                apply_control(sim, args.control)
                        else:
                            break
                finally:
                    if args.record:
                        write_atomically(args.record, json.dumps(sim.record()).encode("ascii"))
                    nursery.cancel_scope.cancel()

    trio.run(run)
    return 0
