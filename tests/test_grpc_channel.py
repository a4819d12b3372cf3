"""The coalescing grpclib Channel (weir/actors/grpc_channel.py) against the simulator over a real
socket, with the node sending one gRPC message per HTTP/2 DATA frame: the same messages arrive, in
far fewer frames for h2 to parse, and the installed grpclib still has the hook it overrides."""

from __future__ import annotations

import asyncio

from grpclib.client import Channel
from grpclib.const import Cardinality
from hypothesis import given
from hypothesis import strategies as st

from weir.actors.grpc_bulk import message_lists
from weir.actors.grpc_channel import CoalescingChannel, CoalescingH2Protocol
from weir.codecs.grpc_raw import RawBytesCodec
from weir.protos.snapchain import HubEventType, SubscribeRequest
from weir.sim.farcaster_data import SnapchainSimConfig
from weir.sim.snapchain import serve_snapchain

from test_grpc_bulk import node_ends_the_stream


def test_grpclib_still_has_the_protocol_hook():
    assert callable(getattr(Channel, "_protocol_factory", None)), "grpclib changed: merging DATA frames is off"


def test_messages_sent_one_per_frame_arrive_whole_in_merged_frames():
    config = SnapchainSimConfig(shards=1, seed=5, rate=0, history=3000, total=3000, framing="one")

    async def scenario() -> None:
        sim, port = await serve_snapchain(config)
        channel = CoalescingChannel("127.0.0.1", port, codec=RawBytesCodec())
        try:
            request = SubscribeRequest(event_types=[int(t) for t in HubEventType], from_id=0, shard_index=1)
            async with channel.request("/HubService/Subscribe", Cardinality.UNARY_STREAM, SubscribeRequest, bytes) as stream:
                await stream.send_message(request, end=True)
                got: list[bytes] = []
                reader = message_lists(stream, max_messages=100)
                while len(got) < 3000:
                    got += await reader.__anext__()
                assert got == [event for _, event in sim.offered(1)]
                protocol = channel._protocol
                assert isinstance(protocol, CoalescingH2Protocol)
                coalescer = protocol.coalescer
                assert coalescer.frames_in > 3000  # the node did send a frame per message
                assert coalescer.frames_out < coalescer.frames_in / 10
                await node_ends_the_stream(sim, reader, stream)  # its trailers come through the merging path too
        finally:
            channel.close()
            sim.close()
            await sim.wait_closed()

    asyncio.run(asyncio.wait_for(scenario(), 30))


@given(st.binary(max_size=200), st.none() | st.integers(0, 255), st.booleans())
def test_a_data_frames_repr_is_hyperframes_own(data, pad, end_stream) -> None:
    """weir's cheaper DATA frame repr (h2 formats every frame it receives) writes hyperframe's text."""
    from hyperframe.frame import DataFrame, _raw_data_repr

    import weir.actors.grpc_channel  # noqa: F401  (installs it)

    frame = DataFrame(1, data, flags=["END_STREAM"] if end_stream else [])
    if pad is not None:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    assert frame._body_repr() == _raw_data_repr(frame.serialize_body())
    assert repr(frame).endswith(_raw_data_repr(frame.serialize_body()))
