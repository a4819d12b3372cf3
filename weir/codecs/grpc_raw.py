"""A grpclib codec that lets pre-encoded protobuf bytes through untouched.

The simulator streams events it encoded once, and the ingestor wants each event's original wire
bytes (decoding a HubEvent with the typed models costs ~50 µs; passing bytes costs nothing). With
this codec a handler or a client asks for ``bytes`` as the message type and gets the payload as it
was on the wire; any other message type is a betterproto2 message, encoded and parsed as usual.
"""

from __future__ import annotations

from typing import Any

from grpclib.encoding.base import CodecBase


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
        return message_type.parse(data)
