"""Bulk reading of gRPC streams: the sans-IO message splitter (property-tested) and the grpclib
reader against the Snapchain simulator over real sockets, compared with grpclib's own path."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import grpclib.client
import grpclib.config
import pytest
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from hypothesis import given
from hypothesis import strategies as st

from weir.actors.grpc_bulk import ACK_EVERY, bulk_capable, message_lists
from weir.codecs.grpc_frames import GrpcFrameError, MessageSplitter, SkippedMessage
from weir.codecs.grpc_raw import RawBytesCodec
from weir.protos.snapchain import HubEventType, SubscribeRequest
from weir.sim.farcaster_data import SnapchainSimConfig
from weir.sim.snapchain import serve_snapchain

ALL_TYPES = [int(t) for t in HubEventType]


def framed(message: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + len(message).to_bytes(4, "big") + message


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# -- the splitter ---------------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=300), max_size=30), st.lists(st.integers(0, 10_000), max_size=40))
def test_messages_come_out_whole_and_in_order_however_the_body_is_cut(messages, points):
    body = b"".join(framed(m) for m in messages)
    splitter = MessageSplitter()
    out: list[bytes] = []
    for piece in cut(body, points):
        out += splitter.feed(piece)
    assert out == messages
    assert splitter.pending == 0
    splitter.finish()


@given(st.lists(st.binary(max_size=100), min_size=1, max_size=5), st.integers(0, 10_000))
def test_a_body_that_ends_inside_a_message_is_an_error(messages, keep):
    frames = [framed(m) for m in messages]
    body = b"".join(frames)
    boundaries = {sum(len(f) for f in frames[:i]) for i in range(len(frames) + 1)}
    keep %= len(body)
    splitter = MessageSplitter()
    out = splitter.feed(body[:keep])
    if keep in boundaries:  # whole messages only: a shorter stream, not a broken one
        assert out == messages[: len(out)]
        splitter.finish()
    else:
        with pytest.raises(GrpcFrameError, match="ended inside a gRPC message"):
            splitter.finish()


def test_a_bad_flag_is_refused_and_an_empty_message_is_a_message():
    with pytest.raises(GrpcFrameError, match="bad gRPC message flag 7"):
        MessageSplitter().feed(framed(b"x", flag=7))
    assert MessageSplitter().feed(framed(b"")) == [b""]  # an empty message is a message


@given(
    st.lists(st.tuples(st.binary(max_size=60), st.sampled_from(["ok", "ok", "big", "compressed"])), max_size=20),
    st.lists(st.integers(0, 10_000), max_size=40),
    st.integers(0, 8),
)
def test_oversized_and_compressed_messages_are_skipped_whatever_the_cuts(items, points, keep):
    """A message over the limit, or compressed, comes out as a SkippedMessage in its place (size,
    first bytes, why), the messages around it come out whole, and nothing is held but its head."""
    limit = 20
    body = b""
    expected: list[object] = []
    for payload, kind in items:
        if kind == "big":
            payload = payload.ljust(limit + 1, b"z")
        body += framed(payload, flag=1 if kind == "compressed" else 0)
        if kind == "ok" and len(payload) <= limit:
            expected.append(payload)
        else:
            why = "compressed, but no compression was negotiated" if kind == "compressed" else "above the 20-byte limit"
            expected.append(SkippedMessage(size=len(payload), head=payload[:keep], why=why))
    splitter = MessageSplitter(max_message=limit, keep_bytes=keep)
    out: list[object] = []
    for piece in cut(body, points):
        out += splitter.feed(piece)
        assert splitter.pending <= max(len(body), 5)
    assert out == expected
    assert splitter.pending == 0
    splitter.finish()


def test_a_huge_message_is_skipped_without_being_held():
    splitter = MessageSplitter(max_message=10, keep_bytes=4)
    prefix = b"\x00" + (3_000_000_000).to_bytes(4, "big")
    assert splitter.feed(prefix + b"abcdef") == []
    assert splitter.pending == 3_000_000_000 - 6
    with pytest.raises(GrpcFrameError, match="ended inside a gRPC message"):
        splitter.finish()


# -- against the simulator --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def subscribed(config: SnapchainSimConfig, port_of=lambda port: port, window: int | None = None):
    sim, port = await serve_snapchain(config)
    windows = {} if window is None else {"http2_connection_window_size": window, "http2_stream_window_size": window}
    channel = grpclib.client.Channel("127.0.0.1", port_of(port), codec=RawBytesCodec(),
                                     config=grpclib.config.Configuration(**windows))
    try:
        async with channel.request("/HubService/Subscribe", Cardinality.UNARY_STREAM, SubscribeRequest, bytes) as stream:
            await stream.send_message(SubscribeRequest(event_types=ALL_TYPES, from_id=0, shard_index=1), end=True)
            yield sim, stream
    finally:
        channel.close()
        sim.close()
        await sim.wait_closed()


async def node_ends_the_stream(sim, reader, stream) -> None:
    """The node ends the stream (as when it drops us): the lists end, the status follows."""
    assert sim.drop_streams() == 1
    with pytest.raises(StopAsyncIteration):
        await reader.__anext__()
    with pytest.raises(GRPCError) as caught:
        await stream.recv_trailing_metadata()
    assert caught.value.status == Status.UNAVAILABLE


def run(scenario):
    async def bounded():
        return await asyncio.wait_for(scenario(), 30)

    return asyncio.run(bounded())


def test_bulk_reading_gives_grpclibs_messages_in_lists_bounded_by_max_messages():
    config = SnapchainSimConfig(shards=1, seed=5, rate=0, history=3000, total=3000)

    async def scenario() -> None:
        async with subscribed(config) as (sim, stream):
            assert bulk_capable(stream), "the installed grpclib changed its buffer: bulk reading is off"
            lists: list[list[bytes]] = []
            got: list[bytes] = []
            reader = message_lists(stream, max_messages=100)
            while len(got) < 3000:
                batch = await reader.__anext__()
                lists.append(batch)
                got += batch
            assert got == [event for _, event in sim.offered(1)]
            assert all(batch for batch in lists)
            # a list stops once it reaches 100, within the DATA chunk that got it there
            assert max(len(batch) for batch in lists) < 100 + 100
            assert len(lists) >= 3000 // 200

            await node_ends_the_stream(sim, reader, stream)

    run(scenario)


@pytest.mark.parametrize("window", [65_535, None], ids=["smallest window", "default 4 MiB window"])
def test_acknowledgements_come_in_large_steps_and_never_leave_the_peer_stuck(window):
    """Acknowledged in steps of ACK_EVERY and whenever the reader would wait: a stream many windows
    long (~1 MB through the smallest window HTTP/2 allows) arrives whole, every byte acknowledged."""
    config = SnapchainSimConfig(shards=1, seed=5, rate=0, history=3000, total=3000)

    async def scenario() -> None:
        async with subscribed(config, window=window) as (sim, stream):
            buffer = stream._stream.buffer
            acks: list[int] = []
            ack = buffer._ack_callback
            buffer._ack_callback = lambda size: (acks.append(size), ack(size))
            lists: list[list[bytes]] = []
            reader = message_lists(stream, max_messages=20)
            while sum(map(len, lists)) < 3000:
                lists.append(await reader.__anext__())
            assert [m for batch in lists for m in batch] == [event for _, event in sim.offered(1)]
            # what is not acknowledged yet is less than a step (5 bytes of gRPC prefix per message)
            taken = sum(len(m) + 5 for batch in lists for m in batch)
            assert 0 <= taken - sum(acks) < ACK_EVERY
            assert len(acks) < len(lists) / 2  # not one per list

            await node_ends_the_stream(sim, reader, stream)

    run(scenario)


async def wait_until(condition, what: str, timeout: float = 10.0) -> None:
    """Wait for ``condition`` (checked every ms) or fail naming ``what``."""
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@pytest.mark.parametrize("queued", [False, True], ids=["waiting", "chunks still queued"])
def test_a_connection_lost_mid_stream_raises_as_grpclib_does(queued):
    """The link dies (no end of stream, no trailers): StreamTerminatedError, whether the reader was
    waiting for data or had chunks still queued (those are not acknowledged on a dead connection)."""
    events = 60_000 if queued else 200  # enough to fill the 4 MiB window behind a paused reader
    config = SnapchainSimConfig(shards=1, seed=6, rate=0, history=events, total=events, pregenerate=queued)
    links: list[asyncio.StreamWriter] = []

    async def scenario() -> None:
        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()

        async def on_client(client_reader, client_writer):
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", port)
            links.extend([client_writer, server_writer])
            await asyncio.gather(forward(client_reader, server_writer), forward(server_reader, client_writer))

        sim, port = await serve_snapchain(config)
        link = await asyncio.start_server(on_client, "127.0.0.1", 0)
        channel = grpclib.client.Channel("127.0.0.1", link.sockets[0].getsockname()[1], codec=RawBytesCodec())
        try:
            async with channel.request("/HubService/Subscribe", Cardinality.UNARY_STREAM, SubscribeRequest, bytes) as stream:
                await stream.send_message(SubscribeRequest(event_types=ALL_TYPES, from_id=0, shard_index=1), end=True)
                reader = message_lists(stream)
                got = await reader.__anext__()
                if queued:
                    unacked = stream._stream.buffer._unacked
                    await wait_until(lambda: unacked.qsize() > 200, "chunks queued behind the reader")
                else:
                    while len(got) < 200:
                        got += await reader.__anext__()
                for writer in links:
                    writer.transport.abort()
                await wait_until(lambda: stream._wrapper._error is not None, "grpclib to see the connection lost")
                with pytest.raises(StreamTerminatedError):
                    while True:
                        got += await reader.__anext__()
                assert got == [event for _, event in sim.offered(1)][: len(got)]  # what came was whole and in order
        finally:
            channel.close()
            link.close()
            sim.close()
            await sim.wait_closed()

    run(scenario)


def test_a_stream_without_grpclibs_buffer_is_read_message_by_message():
    class Plain:
        def __init__(self, items):
            self.items = list(items)

        def __aiter__(self):
            return self

        async def __anext__(self):
            if not self.items:
                raise StopAsyncIteration
            return self.items.pop(0)

    async def scenario():
        return [batch async for batch in message_lists(Plain([b"a", b"b"]))]

    assert not bulk_capable(Plain([]))
    assert run(scenario) == [[b"a"], [b"b"]]
