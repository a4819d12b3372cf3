"""The Snapchain simulator's framing option, seen on the wire by a raw HTTP/2 client (h2).

``packed`` puts many gRPC messages into one DATA frame (as a tonic node does while a subscriber
catches up); ``one`` sends each message in a DATA frame of its own. Either way the messages are
the offered events, byte for byte.
"""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
import h2.settings
from h2.settings import SettingCodes
import pytest

from weir.actors.farcaster import subscribe_request
from weir.protos.snapchain import HubEventType
from weir.sim.farcaster_data import SnapchainSimConfig, generate_offered
from weir.sim.__main__ import build_parser, config_from_args
from weir.sim.process import snapchain_args
from weir.sim.snapchain import serve_snapchain

TIMEOUT = 30.0
EVENTS = 3000
INITIAL_WINDOW_SIZE = SettingCodes.INITIAL_WINDOW_SIZE
WINDOW = 1 << 30  # flow control never splits a message here: what is seen is the server's framing


async def subscribe_frames(port: int, expected_bytes: int) -> list[bytes]:
    """The payloads of the DATA frames of a Subscribe from id 0 on shard 1, until ``expected_bytes``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.local_settings = h2.settings.Settings(client=True, initial_values={INITIAL_WINDOW_SIZE: WINDOW})
    connection.initiate_connection()
    connection.increment_flow_control_window(WINDOW)  # the connection's window, as large
    stream_id = connection.get_next_available_stream_id()
    connection.send_headers(stream_id, [
        (":method", "POST"), (":scheme", "http"), (":authority", f"127.0.0.1:{port}"),
        (":path", "/HubService/Subscribe"), ("content-type", "application/grpc"), ("te", "trailers"),
    ])
    request = subscribe_request(1, 0, [int(t) for t in HubEventType if t])
    connection.send_data(stream_id, b"\x00" + len(request).to_bytes(4, "big") + request, end_stream=True)
    writer.write(connection.data_to_send())
    frames: list[bytes] = []
    received = 0
    try:
        while received < expected_bytes:
            chunk = await reader.read(65536)
            assert chunk, "the simulator closed the connection"
            for event in connection.receive_data(chunk):
                if isinstance(event, h2.events.DataReceived):
                    frames.append(event.data)
                    received += len(event.data)
                    connection.acknowledge_received_data(event.flow_controlled_length, stream_id)
            writer.write(connection.data_to_send())
    finally:
        writer.close()
    return frames


def split_messages(data: bytes) -> list[bytes]:
    """The whole gRPC messages (5-byte prefix, then the body) at the start of ``data``."""
    out = []
    at = 0
    while at + 5 <= len(data):
        size = int.from_bytes(data[at + 1 : at + 5], "big")
        if at + 5 + size > len(data):
            break
        out.append(data[at + 5 : at + 5 + size])
        at += 5 + size
    return out


async def frames_served(config: SnapchainSimConfig, expected_bytes: int) -> list[bytes]:
    sim, port = await serve_snapchain(config)
    try:
        return await asyncio.wait_for(subscribe_frames(port, expected_bytes), TIMEOUT)
    finally:
        sim.close()
        await sim.wait_closed()


@pytest.mark.parametrize("framing", ["packed", "one"])
def test_framing_decides_messages_per_data_frame(framing: str) -> None:
    config = SnapchainSimConfig(shards=1, rate=0, history=EVENTS, total=EVENTS, framing=framing)
    offered = [payload for _, payload in generate_offered(config, 1, EVENTS)]
    frames = asyncio.run(frames_served(config, sum(5 + len(payload) for payload in offered)))
    assert split_messages(b"".join(frames)) == offered
    per_frame = [len(split_messages(frame)) for frame in frames]
    if framing == "one":
        # every frame is exactly one whole message: nothing packed, nothing split
        assert per_frame == [1] * EVENTS
        assert [frame[5:] for frame in frames] == offered
    else:
        assert len(frames) * 20 < EVENTS
        assert max(per_frame) >= 50


def test_framing_is_validated() -> None:
    with pytest.raises(ValueError):
        SnapchainSimConfig(framing="tiny")


@pytest.mark.parametrize(("framing", "live_after_subscribe"), [("packed", False), ("one", True)])
def test_framing_reaches_a_simulator_process(framing: str, live_after_subscribe: bool) -> None:
    config = SnapchainSimConfig(shards=1, rate=0, history=10, total=10, framing=framing, live_after_subscribe=live_after_subscribe)
    args = build_parser().parse_args(snapchain_args(config)[3:])  # past "python -m weir.sim"
    assert config_from_args(args) == config
