"""The sans-IO decisions of weir deliver (weir/deliver/decisions.py) and the Parquet row mapping."""

from __future__ import annotations

import io
import math

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given
from hypothesis import strategies as st

from weir.deliver.decisions import (
    UNEXPLAINED_FACTOR,
    Claimed,
    FailureMemory,
    RollPolicy,
    SortedIds,
    hour_of,
    parse_entry_id,
    safe_to_commit,
    triage,
    twin_alive,
)
from weir.deliver.parquet_rows import RowBuffer, RowError, SourceSchema, hours_of, seconds_of

u64 = st.integers(0, (1 << 64) - 1)
entry_ids = st.builds(lambda ms, seq: f"{ms}-{seq}", u64, u64)


def limit_for(entry_id, reasons, max_deliveries):
    """Refused here: max_deliveries; read again without a refusal seen (a stall, a crash): more."""
    return max_deliveries if reasons.get(entry_id) is not None else max_deliveries * UNEXPLAINED_FACTOR


@given(st.lists(st.tuples(entry_ids, st.integers(1, 60)), unique_by=lambda item: item[0]), st.integers(1, 10))
def test_triage_dead_letters_exactly_the_entries_delivered_more_than_their_limit(items, max_deliveries):
    reasons = FailureMemory()
    for entry_id, _ in items[::2]:
        reasons.remember(entry_id, "ts is not a number")
    decision = triage([Claimed(entry_id=i, deliveries=n) for i, n in items], max_deliveries=max_deliveries, reasons=reasons)
    dead = dict(decision.dead)
    assert set(decision.deliver) | set(dead) == {i for i, _ in items}
    assert not set(decision.deliver) & set(dead)
    for entry_id, deliveries in items:
        assert (entry_id in dead) == (deliveries > limit_for(entry_id, reasons, max_deliveries))
        if entry_id in dead:
            assert f"after {deliveries - 1} deliveries" in dead[entry_id]
            assert ("ts is not a number" in dead[entry_id]) == (reasons.get(entry_id) is not None)
    # order kept
    assert list(decision.deliver) == [i for i, n in items if n <= limit_for(i, reasons, max_deliveries)]


def test_a_stalled_deliverers_own_entries_are_not_dead_lettered_at_max_deliveries():
    """Counts raised by claims after a stall, no refusal seen: tried again up to the wider limit."""
    claimed = [Claimed(entry_id="1-0", deliveries=6), Claimed(entry_id="2-0", deliveries=6)]
    reasons = FailureMemory()
    reasons.remember("2-0", "ts is not a number")
    decision = triage(claimed, max_deliveries=5, reasons=reasons)
    assert decision.deliver == ("1-0",)
    assert [entry_id for entry_id, _ in decision.dead] == ["2-0"]
    crashed = triage([Claimed(entry_id="1-0", deliveries=5 * UNEXPLAINED_FACTOR + 1)], max_deliveries=5, reasons=FailureMemory())
    assert [entry_id for entry_id, _ in crashed.dead] == ["1-0"]  # never retried for ever


@given(st.lists(st.tuples(entry_ids, st.integers(1, 20)), unique_by=lambda item: item[0]), st.integers(1, 10),
       st.data())
def test_entries_the_target_holds_are_neither_offered_again_nor_dead_lettered(items, max_deliveries, data):
    held = set(data.draw(st.sets(st.sampled_from([i for i, _ in items]))) if items else set())
    decision = triage([Claimed(entry_id=i, deliveries=n) for i, n in items], max_deliveries=max_deliveries,
                      reasons=FailureMemory(), held=held)
    decided = set(decision.deliver) | {i for i, _ in decision.dead}
    assert decided == {i for i, _ in items} - held


@given(u64, u64, u64, u64)
def test_entry_ids_order_as_redis_orders_them(a, b, c, d):
    assert (parse_entry_id(f"{a}-{b}") < parse_entry_id(f"{c}-{d}")) == ((a, b) < (c, d))


@given(st.lists(entry_ids), entry_ids, entry_ids)
def test_the_ids_a_file_range_covers_are_exactly_those_between_its_ends(ids, a, b):
    first, last = sorted([parse_entry_id(a), parse_entry_id(b)])
    got = SortedIds(ids).between(first, last)
    assert sorted(got) == sorted(i for i in ids if first <= parse_entry_id(i) <= last)
    assert got == sorted(got, key=parse_entry_id)


@given(st.integers(1, 10**6), st.floats(0.001, 3600), st.integers(0, 10**6), st.floats(0, 1e6), st.floats(0, 1e4))
def test_a_file_is_due_at_its_row_limit_or_age_and_stays_due(max_rows, max_age, rows, opened_at, elapsed):
    policy = RollPolicy(max_rows=max_rows, max_age=max_age)
    due = policy.due(rows=rows, opened_at=opened_at, now=opened_at + elapsed)
    assert due == (rows >= max_rows or opened_at + elapsed >= opened_at + max_age)
    if due:  # more rows or more time never make it not due
        assert policy.due(rows=rows + 1, opened_at=opened_at, now=opened_at + elapsed + 1)
    assert policy.due(rows=0, opened_at=opened_at, now=policy.due_at(opened_at))


@given(st.lists(st.one_of(st.none(), st.integers(0, 10**7))), st.floats(0.1, 3600))
def test_a_commit_is_safe_only_while_every_entry_is_ours_and_far_from_claimable(idle, claim_idle):
    safe = safe_to_commit(idle, claim_idle=claim_idle)
    assert safe == all(i is not None and i < claim_idle * 1000 * 2 / 3 for i in idle)
    if any(i is None for i in idle):
        assert not safe


@given(st.floats(0, 4e9))
def test_hour_of_is_the_utc_hour(seconds):
    hour = hour_of(seconds)
    assert len(hour) == 13 and hour[10] == "T"
    assert hour_of(math.floor(seconds / 3600) * 3600) == hour


@given(st.lists(st.one_of(st.none(), st.floats().map(lambda f: repr(f).encode()),
                          st.binary(max_size=6)), max_size=30))
def test_the_hours_of_a_batch_are_each_entrys_own(timestamps):
    """hours_of reads each distinct ts once; each entry still gets hour_of(seconds_of(its fields))."""
    batch = [{} if ts is None else {b"ts": ts} for ts in timestamps]
    assert hours_of(batch) == [hour_of(seconds_of(fields)) for fields in batch]


@given(st.one_of(st.text(max_size=12), st.from_regex(r"[0-9\u0660-\u0669]{1,5}-[0-9\u00b2]{1,3}", fullmatch=True)))
def test_a_row_reads_its_entry_id_as_parse_entry_id_does(entry_id):
    fields = {b"kind": b"MERGE_MESSAGE", b"ts": b"1"}
    try:
        expected = parse_entry_id(entry_id)
    except ValueError:
        expected = None
    try:
        row = SourceSchema.of("farcaster").row(entry_id, fields)
    except RowError:
        assert expected is None
    else:
        assert (row["position"], row["sub"]) == expected


@given(st.lists(st.text(min_size=1, max_size=5), max_size=50), st.integers(1, 10))
def test_failure_memory_is_bounded_and_keeps_the_latest(ids, capacity):
    memory = FailureMemory(capacity)
    for n, entry_id in enumerate(ids):
        memory.remember(entry_id, f"reason {n}")
    assert len(memory) <= capacity
    if ids:
        assert memory.get(ids[-1]) == f"reason {max(n for n, i in enumerate(ids) if i == ids[-1])}"


fields_values = st.binary(max_size=20)


@given(st.lists(st.tuples(u64, st.integers(0, 3), st.binary(max_size=40), st.one_of(st.none(), u64),
                          st.floats(0, 4e9), st.dictionaries(st.text("abcxyz", min_size=1, max_size=4), st.text(max_size=5), max_size=3)),
                unique_by=lambda row: (row[0], row[1]), max_size=20), st.integers(0, 25))
def test_farcaster_rows_round_trip_through_a_parquet_file(rows, split):
    schema = SourceSchema.of("farcaster")
    buffer = RowBuffer(schema)
    expected = []
    for position, sub, payload, fid, ts, extra in rows:
        fields = {b"kind": b"MERGE_MESSAGE", b"data": payload, b"key": b"k", b"ts": repr(ts).encode(), b"type": b"CAST_ADD"}
        if fid is not None:
            fields[b"fid"] = b"%d" % fid
        fields.update({name.encode(): value.encode() for name, value in extra.items()})
        buffer.append(schema.values(f"{position}-{sub}", fields))
        expected.append((f"{position}-{sub}", position, sub, payload, fid, sorted(extra.items())))
    first = buffer.take_table(split)  # a row group's worth, then the rest (as the target writes them)
    assert len(first) == min(split, len(rows)) and len(buffer) == len(rows) - len(first)
    sink = io.BytesIO()
    pq.write_table(pa.concat_tables([first, buffer.take_table()]), sink)
    table = pq.read_table(io.BytesIO(sink.getvalue())).to_pylist()
    got = [(r["stream_id"], r["position"], r["sub"], r["data"], r["fid"], sorted(r["extra"] or [])) for r in table]
    assert got == expected
    assert len(buffer) == 0


@given(st.sampled_from([b"fid", b"block"]),
       st.binary(min_size=1, max_size=8).filter(lambda b: not b.isdigit())
       | st.integers(min_value=21, max_value=6000).map(lambda digits: b"9" * digits))  # past int()'s 4,300
def test_a_typed_field_that_is_not_its_type_refuses_the_row(name, value):
    fields = {b"kind": b"MERGE_MESSAGE", b"data": b"", b"ts": b"1", name: value}
    try:
        SourceSchema.of("farcaster").row("1-0", fields)
    except RowError as exc:
        assert name.decode() in str(exc)
    else:
        raise AssertionError("the row was accepted")


def test_atproto_and_ethereum_routing_fields_become_their_columns():
    atproto = SourceSchema.of("atproto").row("9-2", {
        b"kind": b"commit", b"data": b"\xa1", b"key": b"bafyrei", b"ts": b"1764000000.5", b"did": b"did:plc:abc",
        b"collection": b"app.bsky.feed.post", b"rkey": b"3k", b"action": b"create", b"rev": b"r1", b"cid": b"bafyrei",
        b"seq": b"9", b"time": b"2025-11-24T16:00:00.5Z"})
    assert (atproto["did"], atproto["collection"], atproto["rkey"], atproto["action"]) == (
        "did:plc:abc", "app.bsky.feed.post", "3k", "create")
    assert (atproto["position"], atproto["sub"]) == (9, 2)
    assert sorted(atproto["extra"]) == [("seq", "9"), ("time", "2025-11-24T16:00:00.5Z")]
    ethereum = SourceSchema.of("ethereum").row("4-0", {
        b"kind": b"retract", b"data": b"{}", b"key": b"1:0xb:3", b"ts": b"1764000000", b"chain": b"1", b"block": b"77",
        b"log_index": b"3", b"tx": b"0xt", b"event": b"Transfer", b"decoded": b'{"event":"Transfer"}'})
    assert (ethereum["kind"], ethereum["chain"], ethereum["block"], ethereum["log_index"], ethereum["tx"]) == (
        "retract", 1, 77, 3, "0xt")
    assert ethereum["address"] is None and ethereum["extra"] is None
    other = SourceSchema.of("mynetwork").row("1-0", {b"kind": b"x", b"ts": b"0", b"colour": b"red"})
    assert other["ts"] is None and other["extra"] == [("colour", "red")]
    assert "colour" not in SourceSchema.of("mynetwork").schema.names


@given(st.integers(0, 10**9), st.floats(100, 60_000), st.floats(0.51, 1.0), st.floats(0, 0.49))
def test_a_twin_is_seen_by_a_read_in_the_waits_second_half_and_a_dead_name_never(idle_before, waited, at, jitter):
    # A live instance under the name read at `at` of the wait: its idle time went back.
    assert twin_alive(idle_before_ms=idle_before, idle_after_ms=int(waited * (1 - at)), waited_ms=waited)
    # Nobody read: the idle time grew by the wait (less what the two samples' timing blurs).
    assert not twin_alive(idle_before_ms=idle_before, idle_after_ms=int(idle_before + waited * (1 - jitter)) + 1,
                          waited_ms=waited)
