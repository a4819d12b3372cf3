"""grpclib's client Channel with incoming DATA frames merged before h2 parses them.

The merging is weir/codecs/http2_coalesce.py (sans-IO, checked against h2 itself); this module
only puts it between the socket and grpclib's H2Protocol. It overrides ``Channel._protocol_factory``,
a private hook of grpclib (pinned ``<0.5``; tests/test_grpc_channel.py checks the installed one).
"""

from __future__ import annotations

import binascii

from grpclib.client import Channel, Handler
from grpclib.protocol import H2Protocol
from hyperframe.frame import DataFrame

from weir.codecs.http2_coalesce import DataCoalescer

_H2_DEFAULT_MAX_FRAME_SIZE = 16384


def _data_frame_body_repr(self: DataFrame) -> str:
    """hyperframe's repr of a DATA frame's body, the same text without hex-encoding all of it.

    h2 4.x formats every frame it receives for its trace log (``repr(frame)``, evaluated even with
    logging off), and hyperframe 6.1 hex-encodes the whole body to keep its first 20 hex digits:
    ~13 µs for a 16 KiB frame, ~1.5 % of weir's CPU. Ten bytes (and one more, to know whether to
    write "...") give the same text (tests/test_grpc_channel.py compares them).
    """
    body = self.serialize_body()
    if not body:
        return "None"
    digits = binascii.hexlify(body[:11]).decode("ascii")
    return "<hex:" + (digits[:20] + "..." if len(digits) > 20 else digits) + ">"


DataFrame._body_repr = _data_frame_body_repr  # type: ignore[method-assign]


class CoalescingH2Protocol(H2Protocol):
    """grpclib's HTTP/2 protocol, fed whole frames with runs of DATA frames merged."""

    coalescer: DataCoalescer

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        super().connection_made(transport)
        h2_connection = getattr(self.connection, "_connection", None)  # what h2 accepts per frame
        limit = getattr(h2_connection, "max_inbound_frame_size", _H2_DEFAULT_MAX_FRAME_SIZE)
        self.coalescer = DataCoalescer(limit)

    def data_received(self, data: bytes) -> None:
        whole = self.coalescer.feed(data)
        if whole:
            super().data_received(whole)


class CoalescingChannel(Channel):
    """A grpclib Channel whose connections use :class:`CoalescingH2Protocol`."""

    def _protocol_factory(self) -> H2Protocol:
        return CoalescingH2Protocol(Handler(), self._config, self._h2_config)
