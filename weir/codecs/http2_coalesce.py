"""Merge runs of small HTTP/2 DATA frames before h2 sees them (sans-IO).

A Snapchain node may send every gRPC message in a DATA frame of its own. h2 then builds a frame
object, runs its stream state machine and emits an event per frame, and grpclib handles each
event: ~9 µs per frame in pure Python, more than the rest of weir's work on the event. Frame
boundaries of DATA carry no meaning (a stream's data is one byte sequence), so consecutive DATA
frames of one stream with no flags are handed to h2 as one frame of their joined payload, up to
the largest frame h2 accepts. Flow control is unchanged: h2 counts the same payload bytes (frame
headers are never flow-controlled).

Only a DATA frame that could be merged waits here while its tail is still arriving (at most the
limit plus its header); every other frame (HEADERS, a DATA frame with END_STREAM or PADDED,
SETTINGS, PING, a frame larger than the limit) goes to h2 unchanged and in order as its bytes come,
so h2 refuses an oversized frame from its header, as it would have, and nothing is held beyond
the limit. The incoming side of a client starts with frames (only a client sends the connection
preface), so this is for client connections.
"""

from __future__ import annotations

import struct

_HEADER = struct.Struct(">HBBBL")  # length (24 bits as 16 + 8), type, flags, R bit + stream id
HEADER_SIZE = 9
DATA = 0x0


class DataCoalescer:
    """Feed it the bytes of a client connection as they arrive; hand what it returns to h2."""

    def __init__(self, max_frame_size: int = 16384) -> None:
        self.max_frame_size = max_frame_size  # h2's local SETTINGS_MAX_FRAME_SIZE (what it accepts)
        self._pending = b""
        self._passing = 0  # bytes still to come of a frame already being handed to h2 as it arrives
        self.frames_in = 0
        self.frames_out = 0

    def feed(self, data: bytes) -> bytes:
        """What h2 may parse of ``pending + data``, with runs of plain DATA frames merged."""
        out: list[bytes] = []
        passed = 0
        if self._passing:
            through = data[: self._passing]
            out.append(through)
            passed = 1  # the rest of a frame counted when it started
            self._passing -= len(through)
            data = data[len(through):]
        buf = self._pending + data if self._pending else data
        end = len(buf)
        unpack = _HEADER.unpack_from
        limit = self.max_frame_size
        pos = 0
        frames = 0
        run_stream = -1  # the stream of the run being merged, -1 when none
        run: list[bytes] = []
        run_size = 0
        while pos + HEADER_SIZE <= end:
            high, low, frame_type, flags, stream = unpack(buf, pos)
            length = (high << 8) | low
            stop = pos + HEADER_SIZE + length
            mergeable = frame_type == DATA and flags == 0 and length <= limit
            if stop > end:
                if not mergeable:  # h2 takes it as it comes: nothing large is held here
                    if run:
                        out.append(_data_frame(run_stream, run, run_size))
                        run = []
                    out.append(buf[pos:end])
                    self._passing = stop - end
                    frames += 1
                    pos = end
                break
            frames += 1
            if mergeable:
                stream &= 0x7FFFFFFF
                if stream == run_stream and run_size + length <= limit:
                    run.append(buf[pos + HEADER_SIZE:stop])
                    run_size += length
                else:
                    if run:
                        out.append(_data_frame(run_stream, run, run_size))
                    run_stream, run, run_size = stream, [buf[pos + HEADER_SIZE:stop]], length
            else:
                if run:
                    out.append(_data_frame(run_stream, run, run_size))
                    run_stream, run, run_size = -1, [], 0
                out.append(buf[pos:stop])
            pos = stop
        if run:
            out.append(_data_frame(run_stream, run, run_size))
        self._pending = buf[pos:]
        self.frames_in += frames
        self.frames_out += len(out) - passed
        return b"".join(out)

    @property
    def pending(self) -> int:
        """Bytes held here: the start of a mergeable DATA frame whose tail is still arriving."""
        return len(self._pending)


def _data_frame(stream: int, payloads: list[bytes], size: int) -> bytes:
    header = _HEADER.pack(size >> 8, size & 0xFF, DATA, 0, stream)
    return header + payloads[0] if len(payloads) == 1 else header + b"".join(payloads)
