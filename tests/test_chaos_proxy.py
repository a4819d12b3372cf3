"""The fault-injecting proxy: the sans-IO shaper with plain numbers, then each fault over real sockets.

An echo server sits behind the proxy; every fault must measurably do what it says, and removing it
must restore faithful forwarding.
"""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator

import pytest
import trio

from weir.chaos.proxy import (
    Bandwidth,
    CloseKind,
    Direction,
    Down,
    FaultHandle,
    Latency,
    LimitData,
    LinkShaper,
    ResetPeer,
    Slicer,
    Timeout,
    open_proxy,
)

pytestmark = pytest.mark.integration


# -- sans-IO ------------------------------------------------------------------------------------


def shaper_with(*faults) -> LinkShaper:
    shaper = LinkShaper(random.Random(1))
    shaper.set_faults([FaultHandle(i, f, Direction.BOTH) for i, f in enumerate(faults)], now=0.0)
    return shaper


def test_shaper_without_faults_passes_chunks_through_now():
    shaped = shaper_with().push(b"abc", now=5.0)
    assert [(s.at, s.data) for s in shaped.segments] == [(5.0, b"abc")]
    assert shaped.close is None


def test_shaper_latency_with_jitter_delays_but_never_reorders():
    shaper = shaper_with(Latency(ms=100, jitter_ms=90))
    times = [shaper.push(b"x", now=i * 0.001).segments[0].at for i in range(200)]
    assert times == sorted(times)
    assert all(t >= i * 0.001 + 0.010 - 1e-9 for i, t in enumerate(times))
    assert max(t - i * 0.001 for i, t in enumerate(times)) > 0.15  # jitter is really applied


def test_shaper_bandwidth_spaces_bytes_at_the_rate():
    shaper = shaper_with(Bandwidth(kb_per_s=10))  # 10,000 bytes/s
    first = shaper.push(b"x" * 5000, now=0.0).segments
    second = shaper.push(b"y" * 5000, now=0.1).segments  # arrives while the line is still busy
    assert b"".join(s.data for s in first + second) == b"x" * 5000 + b"y" * 5000
    assert first[-1].at == pytest.approx(0.5)
    assert second[-1].at == pytest.approx(1.0)
    assert len(first) > 1  # trickles out in pieces


def test_shaper_limit_data_truncates_at_exactly_the_limit_across_chunks():
    shaper = shaper_with(LimitData(bytes=10))
    assert shaper.push(b"123456", now=0).close is None
    shaped = shaper.push(b"789abc", now=0)
    assert b"".join(s.data for s in shaped.segments) == b"789a"
    assert shaped.close is CloseKind.FIN


def test_shaper_slicer_splits_and_spaces_pieces():
    shaper = shaper_with(Slicer(average_size=10, size_variation=3, delay_us=500))
    segments = shaper.push(bytes(range(100)), now=1.0).segments
    assert b"".join(s.data for s in segments) == bytes(range(100))
    assert all(7 <= len(s.data) <= 13 for s in segments[:-1])
    assert [s.at for s in segments] == pytest.approx([1.0 + i * 0.0005 for i in range(len(segments))])


def test_shaper_timeout_and_reset_are_connection_deadlines():
    shaper = LinkShaper(random.Random(1))
    shaper.set_faults([FaultHandle(1, Timeout(close_after_ms=200), Direction.BOTH)], now=10.0)
    assert shaper.stalled
    assert shaper.deadline() == (pytest.approx(10.2), CloseKind.FIN)
    shaper.set_faults(
        [FaultHandle(1, Timeout(close_after_ms=200), Direction.BOTH), FaultHandle(2, ResetPeer(after_ms=50), Direction.BOTH)],
        now=10.1,
    )
    assert shaper.deadline() == (pytest.approx(10.15), CloseKind.RST)  # the timeout kept its start
    shaper.set_faults([], now=11.0)
    assert not shaper.stalled and shaper.deadline() is None


# -- real sockets -------------------------------------------------------------------------------


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


@pytest.fixture
async def proxy(echo_port):
    async with open_proxy("127.0.0.1", echo_port, seed=7) as proxy:
        yield proxy


async def connect(proxy) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", proxy.port)


async def receive_exactly(stream: trio.SocketStream, size: int, *, timeout: float = 5.0) -> tuple[bytes, int]:
    """Read ``size`` bytes; return them and how many reads it took."""
    data = b""
    reads = 0
    with trio.fail_after(timeout):
        while len(data) < size:
            chunk = await stream.receive_some(65536)
            assert chunk, f"EOF after {len(data)} of {size} bytes"
            data += chunk
            reads += 1
    return data, reads


async def round_trip(stream: trio.SocketStream, payload: bytes = b"ping") -> float:
    start = trio.current_time()
    await stream.send_all(payload)
    data, _ = await receive_exactly(stream, len(payload))
    assert data == payload
    return trio.current_time() - start


async def test_forwards_faithfully_and_counts_bytes(proxy):
    async with await connect(proxy) as stream:
        payload = random.Random(1).randbytes(200_000)
        await stream.send_all(payload)
        data, _ = await receive_exactly(stream, len(payload))
    assert data == payload
    stats = proxy.statistics()
    assert stats.connections == 1
    assert stats.bytes_upstream == stats.bytes_downstream == len(payload)


async def test_latency_adds_at_least_the_delay_and_removing_it_restores(proxy):
    async with await connect(proxy) as stream:
        assert await round_trip(stream) < 0.05
        handle = proxy.add(Latency(ms=150), direction=Direction.DOWNSTREAM)
        assert await round_trip(stream) >= 0.15
        both = proxy.add(Latency(ms=100, jitter_ms=20), direction="upstream")
        assert await round_trip(stream) >= 0.15 + 0.08
        proxy.remove(handle)
        proxy.remove(both)
        assert await round_trip(stream) < 0.05


async def test_bandwidth_caps_throughput(proxy):
    async with await connect(proxy) as stream:
        proxy.add(Bandwidth(kb_per_s=50), direction=Direction.DOWNSTREAM)
        elapsed = await round_trip(stream, b"z" * 20_000)  # 0.4 s at 50 KB/s
        assert 0.38 <= elapsed < 2.0
        proxy.clear()
        assert await round_trip(stream, b"z" * 20_000) < 0.1


async def test_timeout_holds_data_then_closes_after_n_ms(proxy):
    async with await connect(proxy) as stream:
        await round_trip(stream)
        proxy.add(Timeout(close_after_ms=300), direction=Direction.UPSTREAM)
        start = trio.current_time()
        await stream.send_all(b"lost in the partition")
        with trio.fail_after(2):
            data = await stream.receive_some(100)
        elapsed = trio.current_time() - start
    assert data == b"", "no data may pass a timeout; the connection ends with EOF"
    assert 0.29 <= elapsed < 1.0
    assert proxy.statistics().cut == 1


async def test_timeout_zero_hangs_until_removed_then_forwards_what_was_held(proxy):
    async with await connect(proxy) as stream:
        handle = proxy.add(Timeout(close_after_ms=0))
        await stream.send_all(b"held")
        with trio.move_on_after(0.3) as waited:  # the fault's own duration, not a condition wait
            await stream.receive_some(100)
        assert waited.cancelled_caught, "data passed a timeout"
        proxy.remove(handle)
        data, _ = await receive_exactly(stream, 4, timeout=2)
    assert data == b"held"


async def test_reset_peer_gives_connection_reset_at_the_client(proxy):
    async with await connect(proxy) as stream:
        await round_trip(stream)
        handle = proxy.add(ResetPeer(after_ms=0))
        with pytest.raises(trio.BrokenResourceError) as info:
            with trio.fail_after(2):
                while True:
                    await stream.receive_some(100)
                    await stream.send_all(b"x")  # pragma: no cover - only if the reset is late
    assert isinstance(info.value.__cause__, ConnectionResetError)
    proxy.remove(handle)
    async with await connect(proxy) as stream:
        assert await round_trip(stream) < 0.05


async def test_reset_peer_after_n_ms(proxy):
    async with await connect(proxy) as stream:
        proxy.add(ResetPeer(after_ms=200))
        start = trio.current_time()
        assert await round_trip(stream) < 0.1  # still forwarding until the reset
        with pytest.raises(trio.BrokenResourceError):
            with trio.fail_after(2):
                await stream.receive_some(100)
    assert trio.current_time() - start >= 0.19


async def test_slicer_delivers_the_same_bytes_in_many_small_reads(proxy):
    payload = random.Random(2).randbytes(3000)
    async with await connect(proxy) as stream:
        proxy.add(Slicer(average_size=50, size_variation=10, delay_us=2000), direction=Direction.DOWNSTREAM)
        await stream.send_all(payload)
        data, reads = await receive_exactly(stream, len(payload))
        assert data == payload
        assert reads >= 20
        proxy.clear()
        await stream.send_all(payload)
        data, reads = await receive_exactly(stream, len(payload))
        assert data == payload and reads <= 3


async def test_limit_data_closes_after_exactly_n_bytes(proxy):
    async with await connect(proxy) as stream:
        proxy.add(LimitData(bytes=1000), direction=Direction.DOWNSTREAM)
        await stream.send_all(b"a" * 5000)
        received = b""
        with trio.fail_after(2):
            while chunk := await stream.receive_some(65536):
                received += chunk
    assert received == b"a" * 1000
    proxy.clear()
    async with await connect(proxy) as stream:
        assert await round_trip(stream, b"b" * 5000) < 0.1


async def test_down_refuses_new_connections_cuts_open_ones_and_up_restores(proxy):
    port = proxy.port
    async with await connect(proxy) as stream:
        await round_trip(stream)
        handle = proxy.add(Down())
        with trio.fail_after(2):
            assert await stream.receive_some(100) == b""  # cut
    with trio.socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        await sock.connect(("127.0.0.1", proxy.port))
    assert proxy.statistics().down
    proxy.remove(handle)

    async def reconnect() -> trio.SocketStream:
        with trio.fail_after(2):
            while True:
                try:
                    return await connect(proxy)
                except OSError:
                    await trio.sleep(0.01)

    async with await reconnect() as stream:
        assert await round_trip(stream) < 0.05
    assert proxy.port == port


async def test_upstream_unreachable_resets_the_client():
    async with open_proxy("127.0.0.1", 1) as proxy:  # nothing listens on port 1
        async with await connect(proxy) as stream:
            with pytest.raises(trio.BrokenResourceError), trio.fail_after(2):
                await stream.receive_some(100)
        assert proxy.statistics().refused == 1
