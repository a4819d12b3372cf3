"""The raw stream-reply parsers (weir/deliver/stream_replies.py) read what redis-py's own parsing
read, on generated replies in both protocols' shapes, including the field-less entries of
pending ids deleted or trimmed from the stream."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from redis._parsers.helpers import parse_xpending, parse_xread, parse_xread_resp3_to_resp2_legacy

from weir.deliver.stream_replies import Entry, entries_of, pack, pending_rows

entry_ids = st.builds(lambda ms, seq: f"{ms}-{seq}".encode(), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
names = st.binary(max_size=8)
field_lists = st.lists(st.tuples(names, st.binary(max_size=20)), max_size=5).map(
    lambda pairs: [item for pair in pairs for item in pair])
# A deleted entry comes back as [id, nil] (RESP2 and RESP3) or, on some servers, [id, []].
entries = st.tuples(entry_ids, st.one_of(field_lists, st.none(), st.just([]))).map(list)


def redis_py_entries(parsed: list) -> tuple[list[Entry], list[str]]:
    """What the consumer group built from redis-py's parsed XREADGROUP reply before."""
    out: list[Entry] = []
    gone: list[str] = []
    for _stream, items in parsed:
        for entry_id, fields in items:
            if fields:
                out.append(Entry(entry_id.decode(), fields))
            else:
                gone.append(entry_id.decode())
    return out, gone


@given(st.one_of(st.none(), st.lists(st.tuples(names, st.lists(entries, max_size=6)).map(list), max_size=2)),
       st.booleans())
def test_xreadgroup_reply_parses_as_redis_py_parses_it(reply: list | None, resp3: bool) -> None:
    if resp3:
        wire = None if reply is None else dict(reply)
        expected = redis_py_entries(parse_xread_resp3_to_resp2_legacy(wire))
    else:
        wire = reply
        expected = redis_py_entries(parse_xread(wire))
    assert entries_of(wire) == expected


consumers = st.text(max_size=8).map(str.encode)  # names weir gave (str)
rows = st.lists(st.tuples(entry_ids, consumers, st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1)).map(list),
                max_size=8, unique_by=lambda row: row[0])


@given(rows)
def test_xpending_rows_parse_as_redis_py_parses_them(page: list) -> None:
    expected = {row["message_id"].decode(): (row["consumer"].decode(), row["time_since_delivered"],
                                             row["times_delivered"])
                for row in parse_xpending(page, parse_detail=True)}
    assert pending_rows(page) == expected


def test_pack_is_resp() -> None:
    assert pack("XACK", "s", "g", "1-2") == b"*4\r\n$4\r\nXACK\r\n$1\r\ns\r\n$1\r\ng\r\n$3\r\n1-2\r\n"
