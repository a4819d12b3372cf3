"""RedisSink._pack_evalsha against a plain RESP encoding of persist.lua's ARGV (pure logic, no Redis).

The packer caches what repeats within a batch (a timestamp's text, an int's or a str's bulk
string); these properties check the bytes are exactly what encoding every argument afresh gives,
including values that compare equal but are written differently (5 and 5.0, 0.0 and -0.0, 1 and
True).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from weir.events import Chunk, DeadLetter, Event
from weir.sinks.redis_sink import PERSIST_SHA, RedisSink

SOURCE = "farcaster"
PART = "1"


def resp(args: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args)


def text(value: object) -> bytes:
    return value if type(value) is bytes else str(value).encode()


def reference(sink: RedisSink, chunks: list[Chunk], expect: int | None) -> bytes:
    """The EVALSHA of persist.lua's ARGV layout (weir/sinks/persist.lua), one argument at a time."""
    top = max(chunks, key=lambda chunk: chunk.through)  # the last of equal ones: its token wins
    top = [chunk for chunk in chunks if chunk.through == top.through][-1]
    events = [event for chunk in chunks for event in chunk.events]
    args = [b"EVALSHA", PERSIST_SHA.encode(), b"3", *(k.encode() for k in sink.keys(PART).as_tuple()),
            b"%d" % top.through, top.token.encode(), b"", b"" if expect is None else b"%d" % expect, b"%d" % len(events)]
    for event in events:
        args += [b"%d" % event.position, b"%d-%d" % (event.position, event.sub), b"%d" % (8 + 2 * len(event.fields)),
                 b"kind", event.kind.encode(), b"data", event.payload, b"key", event.key, b"ts", text(event.timestamp)]
        for name, value in event.fields.items():
            args += [name.encode(), text(value)]
    letters = [letter for chunk in chunks for letter in chunk.dead]
    args.append(b"%d" % len(letters))
    for letter in letters:
        args += [b"" if letter.position is None else b"%d" % letter.position, letter.reason.encode(), letter.payload,
                 text(letter.received)]
    return resp(args)


# Few distinct values, so that the packer's caches are hit, with the equal-but-differently-written.
values = st.sampled_from([0, 1, 5, 2**64 - 1, 5.0, 0.0, -0.0, 1.5, True, False, "5", "CAST_ADD", "", "ü", b"5", b"\x00\xff"])
timestamps = st.sampled_from([0.0, -0.0, 5.0, 5, 1700000000.25, 1609459200.0, float("nan"), float("inf")])
names = st.sampled_from(["block", "fid", "type", "ü"])


@st.composite
def chunk_lists(draw: st.DrawFn) -> list[Chunk]:
    chunks = []
    position = draw(st.integers(0, 2**64 - 50))
    for _ in range(draw(st.integers(1, 3))):
        events = []
        for _ in range(draw(st.integers(0, 4))):
            position += draw(st.integers(0, 2))
            events.append(Event(
                source=SOURCE, partition=PART, position=position, sub=draw(st.integers(0, 3)),
                kind=draw(st.sampled_from(["MERGE_MESSAGE", "BLOCK_CONFIRMED"])), key=draw(st.binary(max_size=4)),
                payload=draw(st.binary(max_size=8)), timestamp=draw(timestamps),
                fields=draw(st.dictionaries(names, values, max_size=3)),
            ))  # fmt: skip
        dead = [DeadLetter(source=SOURCE, partition=PART, payload=b"x", reason="bad", position=position, received=draw(timestamps))
                for _ in range(draw(st.integers(0, 1)))]
        chunks.append(Chunk(partition=PART, events=events, through=position + draw(st.integers(0, 2)),
                            token=draw(st.sampled_from(["", "t"])), dead=dead))
    return chunks


@given(chunk_lists(), st.none() | st.integers(0, 2**64 - 1))
def test_the_packed_command_is_the_plain_encoding_of_every_argument(chunks: list[Chunk], expect: int | None) -> None:
    sink = RedisSink("redis://127.0.0.1:1/0", source=SOURCE)
    assert sink._pack_evalsha(PART, chunks, expect) == reference(sink, chunks, expect)
    # Twice with the same sink: what the first call cached changes nothing.
    assert sink._pack_evalsha(PART, chunks, expect) == reference(sink, chunks, expect)


def test_a_float_timestamp_after_an_equal_int_is_written_as_a_float() -> None:
    # Found by the property above: 5 then 5.0 reused "5" for the float.
    sink = RedisSink("redis://127.0.0.1:1/0", source=SOURCE)
    events = [Event(source=SOURCE, partition=PART, position=1, sub=sub, kind="MERGE_MESSAGE", payload=b"x", timestamp=ts)
              for sub, ts in enumerate([5, 5.0, 5.0])]
    chunks = [Chunk(partition=PART, events=events, through=1)]
    assert sink._pack_evalsha(PART, chunks, None) == reference(sink, chunks, None)
