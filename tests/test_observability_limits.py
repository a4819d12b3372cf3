"""The observability endpoint cannot be exhausted: a connection cap, idle and request timeouts,
and an attack on /metrics that leaves ingestion alone (docs/security.md)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from helpers import metrics_url_from, wait_for, weir_args, weir_process
from test_observability import http, parse_response, samples, value

from weir.observability.http import BUSY_RESPONSE, Observability
from weir.sim.farcaster_data import SnapchainSimConfig
from weir.sim.process import open_snapchain_sim
from weir.sinks.keys import partition_keys

TIMEOUT = 20.0


async def connect(url: str) -> trio.SocketStream:
    parts = urlsplit(url)
    return await trio.open_tcp_stream(parts.hostname, parts.port)


async def read_to_close(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


@asynccontextmanager
async def serving(**limits: Any) -> AsyncIterator[Observability]:
    """The endpoint alone (no service attached: /healthz answers), with ``limits``, for the block."""
    observability = Observability("127.0.0.1", 0, **limits)
    await observability.bind()
    try:
        async with trio.open_nursery() as nursery:
            stopping = trio.Event()
            await nursery.start(observability.run, stopping)
            yield observability
            stopping.set()
    finally:
        await observability.aclose()


async def test_a_connection_above_the_cap_is_answered_503_and_closed_at_once():
    async with serving(max_connections=2, idle_timeout=30.0) as observability:
        held = [await connect(observability.url) for _ in range(2)]
        await wait_for(lambda: observability.connections == 2, timeout=5, what="two connections held")
        extra = await connect(observability.url)
        with trio.fail_after(2):  # at once, although the held ones may idle for 30 s
            assert await read_to_close(extra) == BUSY_RESPONSE
        status, headers, _ = parse_response(BUSY_RESPONSE)
        assert (status, headers["retry-after"], headers["connection"]) == (503, "1", "close")
        assert (observability.connections, observability.refused) == (2, 1)
        await held.pop().aclose()  # a slot frees: the next client is served
        await wait_for(lambda: observability.connections == 1, timeout=5, what="the closed connection to end")
        assert (await http(observability.url, "/healthz"))[0] == 200
        for stream in held + [extra]:
            await stream.aclose()


async def test_a_request_that_trickles_in_is_cut_after_the_request_timeout():
    """A slowloris client: a byte now and then keeps the idle timeout away, not the request timeout."""
    async with serving(idle_timeout=30.0, request_timeout=0.5) as observability:
        stream = await connect(observability.url)
        request = b"GET /healthz HTTP/1.1\r\nHost: weir\r\nX-Slow: " + b"a" * 1000

        async def trickle() -> None:
            try:
                for byte in request:
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.05)  # the client's pace, not a wait for a condition
            except trio.BrokenResourceError:  # the server closed: what the test waits for
                pass

        closed_at = None
        async with trio.open_nursery() as client:
            client.start_soon(trickle)
            started = trio.current_time()
            with trio.fail_after(5):
                try:
                    assert await read_to_close(stream) == b""  # closed with no answer
                except trio.BrokenResourceError:  # or reset, a byte of ours still unread
                    pass
            closed_at = trio.current_time() - started
            client.cancel_scope.cancel()
        assert closed_at < 3.0, f"a trickling request held the connection {closed_at:.1f} s"
        await wait_for(lambda: observability.connections == 0, timeout=5, what="the connection to be released")
        await stream.aclose()


def sockets_of(pid: int) -> int:
    """Open socket descriptors of process ``pid``."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:  # closed meanwhile
            pass
    return count


ATTACKERS = 300
CAP = 16
IDLE = 3.0


@pytest.mark.integration
async def test_hundreds_of_idle_connections_neither_exhaust_metrics_nor_touch_ingestion(redis_server, redis_client, tmp_path):
    sim_config = SnapchainSimConfig(shards=1, seed=41, rate=400, history=0)
    log_path = tmp_path / "weir.log"
    events = partition_keys("farcaster", "1").events

    async def persisted() -> int:
        return await redis_client("XLEN", events)

    async with open_snapchain_sim(sim_config) as sim:
        args = weir_args(
            "run", "--redis-url", redis_server.url, "--farcaster-url", sim.url,
            "--set", "farcaster.start=oldest", "--set", "farcaster.shards=1", "--set", "metrics.port=0",
            "--set", f"metrics.max_connections={CAP}", "--set", f"metrics.idle_timeout={IDLE}",
            "--set", "metrics.request_timeout=1",
        )  # fmt: skip
        async with weir_process(args, log_path) as process:
            url = await metrics_url_from(log_path)
            await wait_for(lambda: _more_than(persisted, 0), timeout=TIMEOUT, what="weir to persist events")
            baseline = sockets_of(process.pid)
            before = await persisted()
            attack_began = trio.current_time()
            attackers: list[trio.SocketStream] = []
            most = baseline
            try:
                for i in range(ATTACKERS):
                    attackers.append(await connect(url))
                    if i % 25 == 0:
                        most = max(most, sockets_of(process.pid))
                # (a) a fresh client gets /metrics within a bounded time: once the held ones idle out.
                body = b""

                async def scraped() -> bool:
                    nonlocal body, most
                    most = max(most, sockets_of(process.pid))
                    try:
                        status, _, body = await http(url, "/metrics")
                    except (trio.BrokenResourceError, ConnectionError, IndexError, ValueError):
                        return False  # refused: a reset, or the close before the 503 could be read
                    return status == 200

                await wait_for(scraped, timeout=IDLE + 5.0, what="a fresh client to get /metrics during the attack")
                served_after = trio.current_time() - attack_began
                # (b) ingestion went on during the attack.
                during = await persisted() - before
            finally:
                for stream in attackers:
                    await stream.aclose()
            metrics = samples(body.decode())
    # (c) the server's descriptors stayed bounded by the cap, whatever the clients did.
    assert most <= baseline + CAP + 2, f"{most} sockets open during the attack (baseline {baseline}, cap {CAP})"
    assert value(metrics, "weir_http_connections_refused_total") >= ATTACKERS - CAP
    assert served_after <= IDLE + 5.0
    assert during >= 200, f"only {during} events persisted in the {served_after:.1f} s of the attack"
    assert "metrics_accept_failed" not in log_path.read_text()


async def _more_than(count, minimum: int) -> bool:
    return await count() > minimum
