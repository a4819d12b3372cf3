"""Merging DATA frames (weir/codecs/http2_coalesce.py) changes nothing h2 reports but the count.

The oracle is h2 itself: a server connection writes a real byte stream (response headers, DATA
frames of any size on two streams, padded frames, END_STREAM, trailers, PING, WINDOW_UPDATE,
SETTINGS, a reset), and two identical client connections read it, one as it came, one through the
coalescer, each in arbitrary chunks. Both must report the same events, once runs of DataReceived on
one stream are joined (same bytes, same flow-controlled length), and the same bytes to send back.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weir.codecs.http2_coalesce import DataCoalescer

REQUEST = [(":method", "POST"), (":path", "/HubService/Subscribe"), (":scheme", "http"), (":authority", "node")]
STREAMS = (1, 3)


def new_client() -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    client.initiate_connection()
    for stream in STREAMS:
        client.send_headers(stream, REQUEST)
    return client


actions = st.lists(
    st.one_of(
        st.tuples(st.just("data"), st.sampled_from(STREAMS), st.binary(min_size=0, max_size=700), st.integers(0, 3)),
        st.tuples(st.just("ping"), st.binary(min_size=8, max_size=8)),
        st.tuples(st.just("window"), st.integers(1, 1000)),
        st.tuples(st.just("settings"), st.integers(100, 1000)),
    ),
    max_size=60,
)


def server_bytes(script, finish: str) -> bytes:
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    server.initiate_connection()
    server.receive_data(new_client().data_to_send())
    for stream in STREAMS:
        server.send_headers(stream, [(":status", "200"), ("content-type", "application/grpc")])
    sent = 0
    for action in script:
        if action[0] == "data":
            _, stream, data, pad = action
            if sent + len(data) + pad + 1 > 60_000:  # stay inside the default flow-control windows
                continue
            server.send_data(stream, data, pad_length=pad or None)
            sent += len(data) + pad + (1 if pad else 0)
        elif action[0] == "ping":
            server.ping(action[1])
        elif action[0] == "window":
            server.increment_flow_control_window(action[1])
        else:
            server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: action[1]})
    if finish == "trailers":
        server.send_headers(1, [("grpc-status", "0")], end_stream=True)
    elif finish == "end-data":
        server.send_data(1, b"last", end_stream=True)
    elif finish == "reset":
        server.reset_stream(3)
    return server.data_to_send()


def joined(events) -> list:
    """h2's events with consecutive DataReceived of one stream joined into one."""
    out: list = []
    for event in events:
        if isinstance(event, h2.events.DataReceived):
            last = out[-1] if out else None
            if last is not None and last[0] == "data" and last[1] == event.stream_id and not event.stream_ended:
                out[-1] = ("data", event.stream_id, last[2] + event.data, last[3] + event.flow_controlled_length, False)
                continue
            out.append(("data", event.stream_id, event.data, event.flow_controlled_length, event.stream_ended is not None))
        else:
            out.append(repr(event))
    return out


def read(stream: bytes, cuts: list[int], coalescer: DataCoalescer | None):
    client = new_client()
    client.data_to_send()
    events = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)]):
        chunk = stream[start:stop]
        if coalescer is not None:
            chunk = coalescer.feed(chunk)
        events.extend(client.receive_data(chunk))
    return joined(events), client.data_to_send()


@settings(max_examples=300)
@given(actions, st.sampled_from(["none", "trailers", "end-data", "reset"]), st.data())
def test_h2_reports_the_same_with_and_without_merging(script, finish, data) -> None:
    stream = server_bytes(script, finish)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    coalescer = DataCoalescer()
    assert read(stream, cuts, coalescer) == read(stream, cuts, None)
    assert coalescer.pending == 0
    assert coalescer.frames_out <= coalescer.frames_in


def test_one_message_per_frame_becomes_one_frame_per_run() -> None:
    script = [("data", 1, b"m" * 200, 0)] * 200  # 200 frames of 200 bytes
    stream = server_bytes(script, "none")
    coalescer = DataCoalescer()
    events, _ = read(stream, [], coalescer)
    others = 4  # the server's SETTINGS, its ACK of the client's, two HEADERS
    assert coalescer.frames_in == 200 + others
    # 81 payloads fill 16,200 of the 16,384 bytes h2 accepts in a frame: 81 + 81 + 38.
    assert coalescer.frames_out == 3 + others
    assert [e for e in events if isinstance(e, tuple)] == [("data", 1, b"m" * 40_000, 40_000, False)]


@pytest.mark.parametrize("cut", range(0, 30))
def test_a_frame_split_anywhere_waits_whole(cut: int) -> None:
    frame = b"\x00\x00\x05\x00\x00\x00\x00\x00\x01hello"
    coalescer = DataCoalescer()
    first = coalescer.feed((frame * 2)[:cut])
    rest = coalescer.feed((frame * 2)[cut:])
    whole = len(frame)
    assert len(first) == (0 if cut < whole else whole if cut < 2 * whole else 9 + 10)  # both whole: merged
    assert first + rest in (frame * 2, b"\x00\x00\x0a\x00\x00\x00\x00\x00\x01hellohello")
    assert coalescer.pending == 0


def test_a_frame_that_cannot_be_merged_goes_to_h2_as_it_comes() -> None:
    """A peer announcing a 16 MiB frame: h2 sees its header at once (and refuses it, as it would
    have); nothing is held here, whatever the frame's length."""
    header = (2**24 - 1).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"  # DATA, stream 1, over the limit
    coalescer = DataCoalescer()
    assert coalescer.feed(header + b"x" * 100) == header + b"x" * 100
    assert coalescer.pending == 0
    assert coalescer.feed(b"y" * 1000) == b"y" * 1000  # the frame's rest, passed on as it comes
    assert coalescer.pending == 0


def test_after_a_passed_frame_merging_resumes_at_the_next_boundary() -> None:
    headers = b"\x00\x00\x03\x01\x04\x00\x00\x00\x01abc"  # HEADERS (END_HEADERS), 3 bytes
    data = b"\x00\x00\x02\x00\x00\x00\x00\x00\x01hi"
    coalescer = DataCoalescer()
    out = coalescer.feed(headers[:5]) + coalescer.feed(headers[5:10])  # the HEADERS frame passes in pieces
    out += coalescer.feed(headers[10:] + data + data)
    assert out == headers + b"\x00\x00\x04\x00\x00\x00\x00\x00\x01hihi"
    assert (coalescer.frames_in, coalescer.frames_out, coalescer.pending) == (3, 2, 0)
