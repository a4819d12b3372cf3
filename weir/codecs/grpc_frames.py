"""gRPC's message framing, sans-IO: a response body cut into its length-prefixed messages.

Each message on a gRPC stream is a 1-byte compressed flag, a 4-byte big-endian length and that many
bytes (gRPC over HTTP/2, "Length-Prefixed-Message"). HTTP/2 DATA frames cut the body anywhere, so
the splitter keeps the unfinished tail between calls. Reading the body in bulk this way instead of
one message at a time through grpclib saves ~5 µs per message under trio-asyncio (docs/performance.md).

A message weir will not take (longer than the limit, or compressed although no compression was
negotiated) is not an error of the stream: its bytes are skipped as they come, without ever being
held whole, and a :class:`SkippedMessage` (its size, its first bytes, why) takes its place in the
output, so the caller can dead-letter it and the stream goes on. Only a body that is not gRPC
framing at all (a flag other than 0 or 1) raises.
"""

from __future__ import annotations

import struct

import attrs

#: The largest message accepted by default: gRPC's default receive limit (Snapchain events are KiBs).
MAX_MESSAGE = 4 * 1024 * 1024
#: Bytes kept of a skipped message by default (enough for a HubEvent's type and id).
KEEP_BYTES = 1024


class GrpcFrameError(ValueError):
    """The body is not a sequence of length-prefixed messages."""


@attrs.frozen(slots=True, kw_only=True)
class SkippedMessage:
    """A message that was read past, not delivered: ``size`` bytes, of which ``head`` are the first.

    ``why`` is one line: "above the N-byte limit" or "compressed, but no compression was negotiated".
    """

    size: int
    head: bytes
    why: str


_PREFIX = struct.Struct(">BI")  # a gRPC message's compressed flag and length


class MessageSplitter:
    """Feed it DATA bytes as they come; it returns the messages completed by each feed, in order.

    Bytes of an unfinished message are kept as a list of pieces and joined once it is complete, so
    a message spread over many DATA frames costs one copy, not one per frame. A message over
    ``max_message`` bytes (or a compressed one) is skipped as it arrives: only its first
    ``keep_bytes`` are held, and it comes out as a :class:`SkippedMessage`.
    """

    def __init__(self, max_message: int = MAX_MESSAGE, keep_bytes: int = KEEP_BYTES) -> None:
        self._pieces: list[bytes] = []
        self._held = 0  # bytes in _pieces
        self._need = 0  # bytes the unfinished message needs in all (prefix included), 0 = unknown yet
        self._max_message = max_message
        self._keep_bytes = keep_bytes
        # The message being skipped: bytes of it still to come, its head so far, its size and why.
        self._skip_left = 0
        self._skip_head = b""
        self._skip_size = 0
        self._skip_why = ""

    @property
    def pending(self) -> int:
        """Bytes of an unfinished message held back (or still to skip)."""
        return self._held + self._skip_left

    def feed(self, data: bytes) -> list[bytes | SkippedMessage]:
        """The messages that ``data`` completes (with what earlier feeds left over).

        Raises:
            GrpcFrameError: a flag other than 0 or 1: the body is not gRPC framing.
        """
        messages: list[bytes | SkippedMessage] = []
        if self._skip_left:
            data = self._skip(data, messages)
            if not data:
                return messages
        if self._pieces:
            self._pieces.append(data)
            self._held += len(data)
            if self._held < (self._need or 5):
                return messages  # still inside the message (or its prefix): nothing to copy yet
            buf = b"".join(self._pieces)
            self._pieces.clear()
            self._held = self._need = 0
        else:
            buf = data
        size = len(buf)
        pos = 0
        prefix = _PREFIX.unpack_from  # one call for flag and length (per message: the hot loop)
        max_message = self._max_message
        append = messages.append
        while size - pos >= 5:
            flag, length = prefix(buf, pos)
            if flag or length > max_message:
                if flag > 1:
                    raise GrpcFrameError(f"bad gRPC message flag {flag} (expected 0)")
                why = (
                    "compressed, but no compression was negotiated"
                    if flag
                    else f"above the {max_message}-byte limit"
                )
                self._skip_left, self._skip_head, self._skip_size, self._skip_why = length, b"", length, why
                rest = self._skip(buf[pos + 5 :], messages)
                buf, size, pos = rest, len(rest), 0
                continue
            end = pos + 5 + length
            if end > size:
                self._need = 5 + length
                break
            append(buf[pos + 5 : end])
            pos = end
        if pos < size:
            self._pieces.append(buf[pos:])
            self._held = size - pos
        return messages

    def _skip(self, data: bytes, messages: list[bytes | SkippedMessage]) -> bytes:
        """Consume ``data`` into the message being skipped; return what follows it (b"" if nothing)."""
        take = min(self._skip_left, len(data))
        room = self._keep_bytes - len(self._skip_head)
        if room > 0:
            self._skip_head += data[: min(room, take)]
        self._skip_left -= take
        if self._skip_left:
            return b""
        messages.append(SkippedMessage(size=self._skip_size, head=self._skip_head, why=self._skip_why))
        self._skip_head = b""
        return data[take:]

    def finish(self) -> None:
        """The body ended: raise if it ended inside a message.

        Raises:
            GrpcFrameError: bytes of an unfinished message are left.
        """
        if self._held or self._skip_left:
            raise GrpcFrameError(f"the stream ended inside a gRPC message ({self.pending} bytes of it)")
