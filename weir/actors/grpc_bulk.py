"""Read a grpclib client stream's messages in bulk (asyncio side).

grpclib hands over one message per ``recv_message`` call: two buffer reads, a dispatch hook, and a
``with`` block whose ``asyncio.current_task()`` trio-asyncio patches — ~7 µs per message, about a
third of weir's CPU per event with a 1 % filter. Here every DATA chunk already received is taken at
once and cut into messages by :class:`~weir.codecs.grpc_frames.MessageSplitter`.

This reads grpclib's per-stream receive buffer (``Buffer._unacked``, ``_ack_callback``, ``_eof``,
and the stream wrapper's ``_error``, as in grpclib 0.4.9; pinned below 0.5 in pyproject.toml); a
stream without those attributes is read message by message as before (:func:`bulk_capable` says
which, and a test checks the installed grpclib is). Flow control is as grpclib's: what is taken is
acknowledged to the peer, in steps of ``ACK_EVERY`` bytes and whenever the buffer is empty (so
never while waiting for data the peer cannot send), and never after the stream was terminated.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from weir.codecs.grpc_frames import KEEP_BYTES, MAX_MESSAGE, MessageSplitter, SkippedMessage

# A sixteenth of grpclib's default 4 MiB receive window: the peer always has most of the window
# to send into, and a WINDOW_UPDATE goes out every ~800 events of ~300 bytes instead of per list.
ACK_EVERY = 256 * 1024


def _buffer_of(stream: Any) -> Any:
    return getattr(getattr(stream, "_stream", None), "buffer", None)


def bulk_capable(stream: Any) -> bool:
    """Whether ``stream`` (a grpclib client Stream, opened) can be read in bulk."""
    buffer = _buffer_of(stream)
    return (
        buffer is not None
        and hasattr(buffer, "_unacked")
        and callable(getattr(buffer, "_ack_callback", None))
        and hasattr(buffer, "_eof")
        and hasattr(getattr(stream, "_wrapper", None), "_error")
        and hasattr(stream, "recv_initial_metadata")
    )


async def message_lists(
    stream: Any, *, max_messages: int = 512, max_message_bytes: int = MAX_MESSAGE, keep_bytes: int = KEEP_BYTES
) -> AsyncIterator[list[bytes | SkippedMessage]]:
    """The raw messages of ``stream``, as lists of what had arrived each time (never empty lists).

    A message over ``max_message_bytes`` (or compressed) is never held whole: a
    :class:`~weir.codecs.grpc_frames.SkippedMessage` with its size and first ``keep_bytes`` takes
    its place, for the caller to dead-letter. (Read message by message, grpclib has no limit of its
    own: the caller checks the size of what it gets.)

    A list stops growing once it holds ``max_messages`` (plus the rest of the DATA chunk that got
    it there): what is not taken yet stays unacknowledged in grpclib's buffer, so the peer's flow
    control window still bounds what is held. Ends at the end of the body; the caller then reads
    the trailers (the status) as usual. A connection lost meanwhile raises grpclib's
    ``StreamTerminatedError``, as ``recv_message`` would.

    Raises:
        GrpcFrameError: the body is not length-prefixed messages, or ends inside one.
    """
    if not bulk_capable(stream):
        async for message in stream:
            yield [message]
        return
    await stream.recv_initial_metadata()  # what recv_message does first: headers, status checks
    buffer = _buffer_of(stream)
    unacked, acknowledge = buffer._unacked, buffer._ack_callback
    wrapper = stream._wrapper
    splitter = MessageSplitter(max_message_bytes, keep_bytes)
    owed = 0  # flow-controlled bytes taken and not acknowledged yet
    while True:
        if unacked.empty():
            if owed:  # never wait with bytes unacknowledged: the peer may be waiting for them
                _raise_if_terminated(wrapper)
                acknowledge(owed)
                owed = 0
            # The wrapper is how grpclib wakes a reader whose connection died (it cancels the task
            # inside it and raises StreamTerminatedError on the way out); held only while waiting,
            # never across a yield.
            with wrapper:
                data, _, ack_size = await unacked.get()
        else:
            _raise_if_terminated(wrapper)
            data, _, ack_size = unacked.get_nowait()
        messages: list[bytes | SkippedMessage] = []
        ended = False
        while True:
            owed += ack_size
            if data:
                messages += splitter.feed(data)
            elif not ack_size and buffer._eof and unacked.empty():
                ended = True  # the end-of-stream marker, always last (an empty DATA frame is skipped)
                break
            if len(messages) >= max_messages or unacked.empty():
                break
            _raise_if_terminated(wrapper)
            data, _, ack_size = unacked.get_nowait()
        if owed >= ACK_EVERY:
            # Acknowledged in large steps, and always before waiting (above): once the peer has
            # filled the window, h2 answers every acknowledgement with a WINDOW_UPDATE, one socket
            # write that wakes the peer, ~5 % of weir's CPU when done per list while catching up.
            acknowledge(owed)
            owed = 0
        if messages:
            yield messages
        if ended:
            splitter.finish()
            return


def _raise_if_terminated(wrapper: Any) -> None:
    """Raise the stream's error once grpclib has terminated it (connection lost, GOAWAY).

    Chunks still queued then must not be acknowledged: the connection's transport is gone, and
    grpclib itself never gets that far (its wrapper raises first).
    """
    error = getattr(wrapper, "_error", None)
    if error is not None:
        raise error
