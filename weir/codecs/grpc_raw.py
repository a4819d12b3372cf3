"""A grpclib codec that lets pre-encoded protobuf bytes through untouched.

The simulator streams events it encoded once, and the ingestor wants each event's original wire
bytes (decoding a HubEvent with the typed models costs ~50 µs; passing bytes costs nothing). With
this codec a handler or a client asks for ``bytes`` as the message type and gets the payload as it
was on the wire; any other message type is a betterproto2 message, encoded and parsed as usual.
A message that does not parse raises :class:`~weir.codecs.protowire.WireError`, whatever
betterproto2 raised (KeyError, EOFError, UnicodeDecodeError … on a garbled GetInfo reply).
"""

from __future__ import annotations

from typing import Any

from grpclib.encoding.base import CodecBase

from weir.codecs.protowire import WireError


class RawBytesCodec(CodecBase):
    """``bytes`` pass through both ways; betterproto2 messages are encoded with ``bytes(msg)``."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, (bytes, bytearray, memoryview)):
            return bytes(message)
        if message_type is bytes:
            raise TypeError(f"expected bytes for a raw message, got {type(message).__name__}")
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if message_type is bytes:
            return data
        try:
            return message_type.parse(data)
        except Exception as exc:  # betterproto2 has no error type of its own: any failure is malformed bytes
            raise WireError(f"not a valid {message_type.__name__}: {type(exc).__name__}: {exc}"[:300]) from exc
