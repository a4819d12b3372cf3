"""Run a simulator as a subprocess from trio (tests, ``weir demo``, the benchmark, chaos runs).

A separate process gives the simulator its own core and its own event loop, so measurements of
the ingestor are not disturbed by the simulator, and a chaos run can kill it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import trio

from weir.files import write_atomically
from weir.sim.farcaster_data import SnapchainSimConfig

if TYPE_CHECKING:  # the AT Protocol and Ethereum simulators' packages are extras (the demo's default needs neither)
    from weir.sim.atproto_data import AtprotoSimConfig
    from weir.sim.ethereum import EthereumSimConfig



class SimulatorFailed(RuntimeError):
    """The simulator process exited or never said it was ready."""


@attrs.frozen(kw_only=True)
class SimProcess:
    """A running simulator process.

    Attributes:
        host, port: where it serves.
        url: ``http://HOST:PORT`` (plaintext gRPC).
        pid: the process id.
        config: what it was started with (recompute its events with ``generate_offered``).
        control: the file it reads on ``SIGUSR2`` (a gRPC status name to fail new calls with, or
            empty), for :class:`weir.chaos.processes.SimProcessHub`.
        record: the file it writes as it exits, with ``record_offered``: what it offered
            (``weir.sim.__main__.write_record``); "" otherwise.
    """

    host: str
    port: int
    pid: int
    config: SnapchainSimConfig
    control: str = ""
    record: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def snapchain_args(config: SnapchainSimConfig, host: str = "127.0.0.1", port: int = 0) -> list[str]:
    """The command line that runs ``config`` (the inverse of ``weir.sim.__main__``)."""
    args = [
        sys.executable, "-m", "weir.sim", "snapchain",
        "--host", host, "--port", str(port),
        "--shards", str(config.shards), "--seed", str(config.seed), "--rate", repr(config.rate),
        "--history", str(config.history),
        "--fids-per-shard", str(config.fids_per_shard), "--max-block-events", str(config.max_block_events),
        "--framing", config.framing,
    ]
    for flag, value in (("--total", config.total), ("--retention", config.retention), ("--corrupt-every", config.corrupt_every)):
        if value is not None:
            args += [flag, str(value)]
    if config.pregenerate:
        args.append("--pregenerate")
    if config.live_after_subscribe:
        args.append("--live-after-subscribe")
    if config.first_block != 1 or config.genesis_time != SnapchainSimConfig().genesis_time:
        raise ValueError("first_block and genesis_time cannot be passed to a simulator process")
    return args


@asynccontextmanager
async def _open_sim_process(
    args: list[str], network: str, *, ready_timeout: float, stop_grace: float
) -> AsyncIterator[tuple[str, int, int]]:
    """Start a simulator process, wait for ``weir-sim <network> listening on HOST:PORT``, yield
    (host, port, pid); on exit SIGTERM it, then SIGKILL after ``stop_grace`` seconds.

    Raises:
        SimulatorFailed: it exited, or did not print its ready line within ``ready_timeout``.
    """
    prefix = f"weir-sim {network} listening on "
    process = await trio.lowlevel.open_process(
        args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1")
    )
    try:
        assert process.stdout is not None
        line = b""
        with trio.move_on_after(ready_timeout):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(256)
                if not chunk:
                    break
                line += chunk
        text = line.decode(errors="replace").strip()
        if not text.startswith(prefix):
            raise SimulatorFailed(f"{network} simulator did not become ready (exit code {process.poll()}, said {text!r})")
        bound_host, _, bound_port = text[len(prefix):].rpartition(":")
        yield bound_host, int(bound_port), process.pid
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(stop_grace):
                    await process.wait()
                if process.poll() is None:
                    process.kill()
                    await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


@asynccontextmanager
async def open_snapchain_sim(
    config: SnapchainSimConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ready_timeout: float = 60.0,
    stop_grace: float = 5.0,
    record_offered: bool = False,
) -> AsyncIterator[SimProcess]:
    """Start ``python -m weir.sim snapchain`` and yield once it serves; stop it on exit.

    ``record_offered``: it writes what it offered to :attr:`SimProcess.record` as it exits.

    Stopping sends SIGTERM, then SIGKILL if it has not exited after ``stop_grace`` seconds.

    Raises:
        SimulatorFailed: it exited, or did not print its ready line within ``ready_timeout``.
    """
    with tempfile.TemporaryDirectory(prefix="weir-sim-") as tmp:
        control = os.path.join(tmp, "status")
        await trio.Path(control).write_text("")  # empty: serve normally
        # the record costs a pass over every event at exit (a regeneration if some were pruned): on request
        record = os.path.join(tmp, "offered.json") if record_offered else ""
        args = [*snapchain_args(config, host, port), "--control", control]
        if record:
            args += ["--record", record]
        async with _open_sim_process(args, "snapchain", ready_timeout=ready_timeout, stop_grace=stop_grace) as (h, p, pid):
            yield SimProcess(host=h, port=p, pid=pid, config=config, control=control, record=record)


def send_command(control: str, pid: int, what: dict[str, object]) -> None:
    """Write ``what`` as JSON to a simulator's ``--control`` file and signal it (SIGUSR2) to read it."""
    write_atomically(control, json.dumps(what).encode())
    os.kill(pid, signal.SIGUSR2)


@attrs.frozen(kw_only=True)
class AtprotoSimProcess:
    """A running simulated relay and Jetstream server process.

    Attributes:
        host, port: where it serves; ``url`` is ``ws://HOST:PORT``.
        pid: the process id (``SIGUSR1`` closes every connection).
        config: what it was started with (recompute its history with ``generate_history``).
        control: the file it reads on ``SIGUSR2`` (a JSON command: see :mod:`weir.sim.atproto_main`);
            :meth:`command` writes it and signals.
        record: where it writes what it offered on exit ("" for nowhere).
    """

    host: str
    port: int
    pid: int
    config: AtprotoSimConfig
    control: str = ""
    record: str = ""

    def command(self, **what: object) -> None:
        """Make the relay do ``what`` now, e.g. ``command(drop=True)``, ``command(error="ConsumerTooSlow")``."""
        send_command(self.control, self.pid, what)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"


def atproto_args(config: AtprotoSimConfig, host: str = "127.0.0.1", port: int = 0) -> list[str]:
    """The command line that runs ``config`` (the inverse of ``weir.sim.atproto_main.config_from_args``)."""
    args = [sys.executable, "-m", "weir.sim", "atproto", "--host", host, "--port", str(port), "--seed", str(config.seed),
            "--total", str(config.total), "--rate", repr(config.rate), "--dids", str(config.dids),
            "--reject-first", str(config.reject_first), "--history", str(config.history),
            "--reorder-at-cutover", str(config.reorder_at_cutover), "--duplicate-at-cutover", str(config.duplicate_at_cutover),
            "--ops-per-commit", ",".join(map(str, config.ops_per_commit)), "--time-step-us", str(config.time_step_us)]
    for flag, value in (("--corrupt-every", config.corrupt_every), ("--drop-after", config.drop_after)):
        if value is not None:
            args += [flag, str(value)]
    if not config.inclusive_replay:
        args.append("--exclusive-replay")
    return args


@asynccontextmanager
async def open_atproto_sim_process(config: AtprotoSimConfig, *, host: str = "127.0.0.1", port: int = 0, record: bool = False,
                                   ready_timeout: float = 60.0, stop_grace: float = 5.0) -> AsyncIterator[AtprotoSimProcess]:
    """Start ``python -m weir.sim atproto`` (firehose and Jetstream on one port) and yield once it
    serves; stop it on exit (SIGTERM, then SIGKILL after ``stop_grace`` seconds).

    ``record``: it writes what it offered to :attr:`AtprotoSimProcess.record` as it exits.

    Raises:
        SimulatorFailed: it exited, or did not print its ready line within ``ready_timeout``.
    """
    with tempfile.TemporaryDirectory(prefix="weir-sim-") as tmp:
        control = os.path.join(tmp, "control.json")
        path = os.path.join(tmp, "offered.json") if record else ""
        args = [*atproto_args(config, host, port), "--control", control]
        if path:
            args += ["--record", path]
        async with _open_sim_process(args, "atproto", ready_timeout=ready_timeout, stop_grace=stop_grace) as (h, p, pid):
            yield AtprotoSimProcess(host=h, port=p, pid=pid, config=config, control=control, record=path)


@asynccontextmanager
async def open_atproto_sim(config: AtprotoSimConfig, *, host: str = "127.0.0.1", port: int = 0,
                           ready_timeout: float = 60.0, stop_grace: float = 5.0) -> AsyncIterator[str]:
    """:func:`open_atproto_sim_process`, yielding only its ``ws://HOST:PORT``."""
    async with open_atproto_sim_process(config, host=host, port=port, ready_timeout=ready_timeout,
                                        stop_grace=stop_grace) as sim:
        yield sim.url


@attrs.frozen(kw_only=True)
class EthereumSimProcess:
    """A running simulated Ethereum node process.

    Attributes:
        host, port: where it serves; ``url`` is ``ws://HOST:PORT``.
        pid: the process id (``SIGUSR1`` drops every connection).
        config: what it was started with.
        record: where it writes its final canonical chain on exit ("" for nowhere).
        control: the file it reads on ``SIGUSR2`` (a JSON command: see :mod:`weir.sim.ethereum_main`);
            :meth:`command` writes it and signals.
    """

    host: str
    port: int
    pid: int
    config: EthereumSimConfig
    record: str = ""
    control: str = ""

    def command(self, **what: object) -> None:
        """Make the node do ``what`` now, e.g. ``command(reorg=3)``, ``command(lag=5)``."""
        send_command(self.control, self.pid, what)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"


def ethereum_args(config: EthereumSimConfig, host: str = "127.0.0.1", port: int = 0, record: str = "") -> list[str]:
    """The command line that runs ``config`` (the inverse of ``weir.sim.ethereum_main.config_from_args``)."""
    args = [
        sys.executable, "-m", "weir.sim", "ethereum", "--host", host, "--port", str(port),
        "--chain-id", str(config.chain_id), "--seed", str(config.seed), "--block-time", repr(config.block_time),
        "--logs-per-block", str(config.logs_per_block), "--history", str(config.history),
        "--blocks", "none" if config.blocks is None else str(config.blocks),
        "--reorg-every", str(config.reorg_every), "--min-reorg-depth", str(config.min_reorg_depth),
        "--max-reorg-depth", str(config.max_reorg_depth), "--max-logs", str(config.max_logs),
        "--drop-every", str(config.drop_every), "--contracts", str(config.contracts),
        "--malformed-log-every", str(config.malformed_log_every),
        "--malformed-header-every", str(config.malformed_header_every),
        "--reannounce", str(config.reannounce), "--max-range", str(config.max_range),
        "--lagging-backend", str(config.lagging_backend),
    ]
    if config.live_after_connect:
        args.append("--live-after-connect")
    if record:
        args += ["--record", record]
    return args


@asynccontextmanager
async def open_ethereum_sim(
    config: EthereumSimConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    record: str = "",
    ready_timeout: float = 60.0,
    stop_grace: float = 5.0,
) -> AsyncIterator[EthereumSimProcess]:
    """Start ``python -m weir.sim ethereum`` and yield once it serves; stop it on exit.

    Stopping sends SIGTERM (it then writes ``record``, when given), then SIGKILL if it has not
    exited after ``stop_grace`` seconds.

    Raises:
        SimulatorFailed: it exited, or did not print its ready line within ``ready_timeout``.
    """
    with tempfile.TemporaryDirectory(prefix="weir-sim-") as tmp:
        control = os.path.join(tmp, "control.json")
        args = [*ethereum_args(config, host, port, record), "--control", control]
        async with _open_sim_process(args, "ethereum", ready_timeout=ready_timeout, stop_grace=stop_grace) as (h, p, pid):
            yield EthereumSimProcess(host=h, port=p, pid=pid, config=config, record=record, control=control)
