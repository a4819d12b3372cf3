"""Run the Snapchain simulator inside the calling trio program (its asyncio side, via trio-asyncio).

For tests and embedding examples that want the simulator and weir in one process; the simulator
still serves real gRPC over a real socket. weir/sim/process.py runs it as a subprocess instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from weir.bridge import call_asyncio, open_asyncio_loop
from weir.sim.farcaster_data import SnapchainSimConfig
from weir.sim.snapchain import SnapchainSim, serve_snapchain

CLOSE_TIMEOUT = 5.0


@asynccontextmanager
async def open_snapchain_sim_in_process(config: SnapchainSimConfig) -> AsyncIterator[tuple[SnapchainSim, str]]:
    """Serve a simulated Snapchain node for the block; yields it and its URL (``http://127.0.0.1:PORT``)."""
    async with open_asyncio_loop():
        sim, port = await call_asyncio(serve_snapchain, config)
        try:
            yield sim, f"http://127.0.0.1:{port}"
        finally:
            with trio.CancelScope(shield=True):
                sim.close()
                # Bounded: on Python 3.11 asyncio's Server.wait_closed waits for every client
                # connection, and one gRPC client connection has been seen left open after a storm
                # of idle-watchdog reconnects (a race between cancelling a connect and closing its
                # channel, under investigation). What the block did is done by now.
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await call_asyncio(sim.wait_closed)
