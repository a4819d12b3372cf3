"""Process faults: kill -9 and restart, SIGSTOP/SIGCONT, Redis losing acknowledged writes, and the
simulator's own failure modes.

Targets share one small interface (:class:`ProcessTarget`: ``kill``, ``start``, ``pause``,
``resume``, ``pid``), which :class:`~weir.sinks.embedded_redis.RedisServer` already has and
:class:`WeirProcess` (``weir run`` as a subprocess) adds, so a schedule treats them alike.

A Redis rollback (:func:`save_redis_state`, then :func:`restart_redis_from`) kill -9s redis-server
and starts it on a copy of its append-only file taken earlier: it comes back without the writes it
acknowledged in between, like a failover to a replica that lagged, or a restart while a slow fsync
held its last writes (appendfsync everysec).

The simulator is controlled through :class:`HubControl`: in this process through its
``SnapchainSim`` (:class:`InProcessHub`), or as a subprocess by signal (:class:`SimProcessHub`:
SIGUSR1 drops every stream, SIGUSR2 toggles UNAVAILABLE — see ``weir.sim.__main__``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

import attrs
import trio
from grpclib.const import Status

from weir.bridge import call_asyncio
from weir.files import write_atomically
from weir.sim.snapchain import SnapchainSim
from weir.sinks.embedded_redis import RedisServer

__all__ = [
    "HubControl",
    "InProcessHub",
    "ProcessTarget",
    "SimProcessHub",
    "WeirProcess",
    "open_weir_process",
    "restart_redis_from",
    "save_redis_state",
    "weir_run_args",
    "weir_run_command",
]

log = logging.getLogger("weir.chaos.processes")


class ProcessTarget(Protocol):
    """A process a chaos schedule may crash or freeze (weir, redis-server)."""

    @property
    def pid(self) -> int: ...

    async def kill(self) -> None: ...

    async def start(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class HubControl(Protocol):
    """The simulated network's failure switches."""

    async def drop_streams(self) -> None: ...

    async def set_error(self, status: Status | None) -> None: ...


def weir_run_command(redis_url: str, source_args: Sequence[str], settings: Sequence[str]) -> list[str]:
    """``python -m weir run`` against ``redis_url``, with ``source_args`` (how it reaches the
    network, e.g. ``--farcaster-url URL``), plus ``--set`` each setting."""
    args = [sys.executable, "-m", "weir", "run", "--redis-url", redis_url, *source_args]
    for setting in settings:
        args += ["--set", setting]
    return args


def weir_run_args(redis_url: str, farcaster_url: str, *settings: str) -> list[str]:
    """``python -m weir run`` against ``redis_url`` and ``farcaster_url``, plus ``--set`` each setting."""
    return weir_run_command(redis_url, ("--farcaster-url", farcaster_url), settings)


@attrs.define(eq=False)
class WeirProcess:
    """``weir run`` as a subprocess that can be killed, frozen and restarted with the same arguments.

    Attributes:
        args: the command line.
        log_path: stdout and stderr of every start are appended here.
        env: extra environment variables.
        starts: how many times it was started (restarts = starts - 1).
    """

    args: Sequence[str]
    log_path: Path
    env: Mapping[str, str] = attrs.Factory(dict)
    starts: int = 0
    _process: trio.Process | None = None
    _paused: bool = False

    @property
    def pid(self) -> int:
        """The running process's id (0 when not running)."""
        return self._process.pid if self.running and self._process is not None else 0

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    async def start(self) -> None:
        """Start the process (it must not be running). Returns at once: readiness is the caller's."""
        if self.running:
            raise RuntimeError(f"weir is already running (pid {self.pid})")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        with open(self.log_path, "ab") as output:
            self._process = await trio.lowlevel.open_process(
                list(self.args), stdin=subprocess.DEVNULL, stdout=output, stderr=output, env=env
            )
        self._paused = False
        self.starts += 1
        log.info("weir started (pid %d, start #%d)", self._process.pid, self.starts)

    async def kill(self) -> None:
        """SIGKILL and wait: no drain, no checkpoint. Idempotent."""
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
            log.info("weir pid %d killed", process.pid)
        self._paused = False

    async def restart(self) -> None:
        """kill -9, then start again with the same arguments."""
        await self.kill()
        await self.start()

    async def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (ordered drain) and wait up to ``timeout`` s; return the exit code (None: still running)."""
        process = self._process
        if process is None or process.returncode is not None:
            return self.returncode
        self.resume()
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(timeout):
            await process.wait()
        return process.returncode

    def pause(self) -> None:
        """SIGSTOP: the process holds its sockets but does nothing."""
        if self.running and not self._paused:
            os.kill(self.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused process."""
        if self.running and self._paused:
            os.kill(self.pid, signal.SIGCONT)
        self._paused = False

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


# Redis 6 keeps its AOF in one file, Redis 7+ and Valkey in a directory of parts with a manifest.
_AOF_NAMES = ("appendonly.aof", "appendonlydir")


async def save_redis_state(server: RedisServer) -> Path:
    """Copy the server's append-only file as it is now; returns the copy (beside the data dir).

    A copy taken while Redis writes may end inside a command; Redis loads such a file by dropping
    the incomplete tail (``aof-load-truncated``, on by default), as after a real crash.
    """
    saved = server.data_dir.with_name(server.data_dir.name + ".saved")

    def copy() -> None:
        shutil.rmtree(saved, ignore_errors=True)
        saved.mkdir(parents=True)
        for name in _AOF_NAMES:
            path = server.data_dir / name
            if path.is_dir():
                shutil.copytree(path, saved / name)
            elif path.is_file():
                shutil.copy2(path, saved / name)

    await trio.to_thread.run_sync(copy)
    return saved


async def restart_redis_from(server: RedisServer, saved: Path) -> None:
    """kill -9 the server and start it on ``saved`` (see :func:`save_redis_state`)."""
    await server.kill()

    def restore() -> None:
        for name in _AOF_NAMES:
            path = server.data_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            if (saved / name).is_dir():
                shutil.copytree(saved / name, path)
            elif (saved / name).is_file():
                shutil.copy2(saved / name, path)

    await trio.to_thread.run_sync(restore)
    await server.start()
    log.info("redis-server restarted from the state saved in %s", saved)


@asynccontextmanager
async def open_weir_process(
    args: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[WeirProcess]:
    """Start ``args`` (see :func:`weir_run_args`); on exit kill it if it still runs."""
    process = WeirProcess(args=list(args), log_path=Path(log_path), env=dict(env or {}))
    await process.start()
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            process.resume()
            await process.kill()


@attrs.define(eq=False)
class InProcessHub:
    """:class:`HubControl` for a ``SnapchainSim`` in this process's asyncio loop (trio-asyncio)."""

    sim: SnapchainSim

    async def drop_streams(self) -> None:
        async def drop() -> int:
            return self.sim.drop_streams()

        await call_asyncio(drop)

    async def set_error(self, status: Status | None) -> None:
        async def set_() -> None:
            self.sim.set_error(status)

        await call_asyncio(set_)


@attrs.define(eq=False)
class SimProcessHub:
    """:class:`HubControl` for ``python -m weir.sim`` by signal.

    With ``control`` (:attr:`weir.sim.process.SimProcess.control`) any status can be injected: it
    is written to that file, then SIGUSR2 makes the simulator read it. Without, SIGUSR2 toggles
    UNAVAILABLE, the only status that can be injected then.
    """

    pid: int
    control: str = ""
    _failing: bool = False

    async def drop_streams(self) -> None:
        os.kill(self.pid, signal.SIGUSR1)
        await trio.lowlevel.checkpoint()

    async def set_error(self, status: Status | None) -> None:
        if self.control:
            # whole or not at all: the simulator never reads a half-written name
            write_atomically(self.control, b"" if status is None else status.name.encode("ascii"))
            os.kill(self.pid, signal.SIGUSR2)
        else:
            if status not in (None, Status.UNAVAILABLE):
                raise ValueError(f"a simulator process without a control file can only inject UNAVAILABLE, not {status}")
            if (status is not None) != self._failing:
                os.kill(self.pid, signal.SIGUSR2)  # a toggle
                self._failing = status is not None
        await trio.lowlevel.checkpoint()
