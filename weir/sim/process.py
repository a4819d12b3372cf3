"""Run a simulator as a subprocess from trio (tests, ``weir demo``, the benchmark, chaos runs).

A separate process gives the simulator its own core and its own event loop, so measurements of
the ingestor are not disturbed by the simulator, and a chaos run can kill it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from weir.sim.atproto_data import AtprotoSimConfig
from weir.sim.farcaster_data import SnapchainSimConfig

READY_PREFIX = "weir-sim snapchain listening on "


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
    """

    host: str
    port: int
    pid: int
    config: SnapchainSimConfig

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
    ]
    for flag, value in (("--total", config.total), ("--retention", config.retention), ("--corrupt-every", config.corrupt_every)):
        if value is not None:
            args += [flag, str(value)]
    if config.pregenerate:
        args.append("--pregenerate")
    if config.first_block != 1 or config.genesis_time != SnapchainSimConfig().genesis_time:
        raise ValueError("first_block and genesis_time cannot be passed to a simulator process")
    return args


@asynccontextmanager
async def open_snapchain_sim(
    config: SnapchainSimConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ready_timeout: float = 60.0,
    stop_grace: float = 5.0,
) -> AsyncIterator[SimProcess]:
    """Start ``python -m weir.sim snapchain`` and yield once it serves; stop it on exit.

    Stopping sends SIGTERM, then SIGKILL if it has not exited after ``stop_grace`` seconds.

    Raises:
        SimulatorFailed: it exited, or did not print its ready line within ``ready_timeout``.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = await trio.lowlevel.open_process(
        snapchain_args(config, host, port), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env
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
        if not text.startswith(READY_PREFIX):
            raise SimulatorFailed(f"simulator did not become ready (exit code {process.poll()}, said {text!r})")
        bound_host, _, bound_port = text[len(READY_PREFIX):].rpartition(":")
        yield SimProcess(host=bound_host, port=int(bound_port), pid=process.pid, config=config)
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
async def open_atproto_sim(config: AtprotoSimConfig, *, host: str = "127.0.0.1", port: int = 0,
                           ready_timeout: float = 60.0, stop_grace: float = 5.0) -> AsyncIterator[str]:
    """Start ``python -m weir.sim atproto`` (firehose and Jetstream on one port); yield its ``ws://HOST:PORT``.

    Raises:
        SimulatorFailed: it exited, or did not print its ready line within ``ready_timeout``.
    """
    args = [sys.executable, "-m", "weir.sim", "atproto", "--host", host, "--port", str(port), "--seed", str(config.seed),
            "--total", str(config.total), "--rate", repr(config.rate), "--dids", str(config.dids),
            "--reject-first", str(config.reject_first)]
    for flag, value in (("--corrupt-every", config.corrupt_every), ("--drop-after", config.drop_after)):
        if value is not None:
            args += [flag, str(value)]
    if not config.inclusive_replay:
        args.append("--exclusive-replay")
    prefix = "weir-sim atproto listening on "
    process = await trio.lowlevel.open_process(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
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
            raise SimulatorFailed(f"atproto simulator did not become ready (exit code {process.poll()}, said {text!r})")
        yield f"ws://{text[len(prefix):]}"
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
