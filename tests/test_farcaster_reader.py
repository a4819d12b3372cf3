"""ShardReader (sans-IO): raw HubEvent bytes -> Chunk, dead letters, replay overlap, gaps.

Also the SubscribeRequest the source sends: hand-encoded bytes that the node's schema must read back.
"""

from __future__ import annotations

import pytest

from weir.actors.farcaster import ShardReader, ShardStats, server_event_types, subscribe_request
from weir.codecs.farcaster_gaps import GapDetector
from weir.codecs.farcaster_keys import BLOCK_CONFIRMED, HUB_EVENT_TYPES, MERGE_MESSAGE, scan_hub_event
from weir.codecs.grpc_frames import SkippedMessage
from weir.codecs.protowire import encode_varint, read_varint
from weir.config import FarcasterSettings, load_config
from weir.protos.snapchain import SubscribeRequest
from weir.sim.farcaster_data import (
    SnapchainSimConfig,
    compose_hub_event,
    generate_offered,
)

SIM = SnapchainSimConfig(shards=2, seed=7)
SHARD = 1


def reader(last_id: int | None = None, subscribed=(), from_id: int | None = 0) -> ShardReader:
    r = ShardReader(
        shard=SHARD,
        partition=str(SHARD),
        detector=GapDetector(subscribed=list(subscribed)),
        stats=ShardStats(),
        last_id=last_id,
    )
    r.detector.subscribed_from(from_id)
    return r


def offered(count: int) -> list[tuple[int, bytes]]:
    return generate_offered(SIM, SHARD, count)


def truncated_with_id(payload: bytes) -> bytes:
    """A HubEvent cut inside its body: type and id (fields 1 and 2) are intact, the body runs past the end."""
    cut = payload[: len(payload) // 2]
    with pytest.raises(ValueError):
        scan_hub_event(cut)
    return cut


# -- chunks ---------------------------------------------------------------------------------------


def test_chunk_carries_every_event_in_order_with_through_the_last_id():
    events = offered(200)
    r = reader()
    chunk = r.read([payload for _, payload in events], received=12.5)
    assert chunk is not None
    assert [e.position for e in chunk.events] == [id_ for id_, _ in events]
    assert [e.payload for e in chunk.events] == [payload for _, payload in events]
    assert all(e.stream_id == f"{e.position}-0" for e in chunk.events)
    assert all(e.received == 12.5 and e.partition == "1" and e.source == "farcaster" for e in chunk.events)
    assert chunk.through == events[-1][0]
    assert chunk.partition == "1"
    assert chunk.dead == []
    assert r.last_id == r.stats.last_id == events[-1][0]
    assert r.stats.received == 200
    assert r.stats.gaps == 0 and r.stats.dead_letters == 0


def test_events_carry_kind_key_timestamp_and_routing_fields():
    events = offered(60)
    chunk = reader().read([payload for _, payload in events], received=0.0)
    assert chunk is not None
    for event, (_, payload) in zip(chunk.events, events):
        keys = scan_hub_event(payload)
        assert event.kind == HUB_EVENT_TYPES[keys.event_type]
        assert event.key == keys.msg_hash
        assert event.fields["block"] == keys.block_number
        assert event.fields.get("fid", 0) == keys.fid
        assert event.timestamp == keys.timestamp + 1609459200
    kinds = {event.kind for event in chunk.events}
    assert {"BLOCK_CONFIRMED", "MERGE_MESSAGE"} <= kinds
    assert all("type" in e.fields for e in chunk.events if e.kind == "MERGE_MESSAGE")


def test_events_at_or_below_last_id_are_skipped_as_replay_overlap():
    events = offered(100)
    last = events[39][0]
    r = reader(last_id=last, from_id=last + 1)
    chunk = r.read([payload for _, payload in events], received=0.0)
    assert chunk is not None
    assert [e.position for e in chunk.events] == [id_ for id_, _ in events[40:]]
    assert r.stats.duplicates_skipped == 40
    assert chunk.through == events[-1][0]

    # a whole read that is all replay still reports how far we are, and moves nothing back
    again = r.read([payload for _, payload in events[:50]], received=0.0)
    assert again is not None and again.events == [] and again.through == events[-1][0]
    assert r.last_id == events[-1][0]


def test_separate_reads_continue_where_the_previous_one_ended():
    events = offered(120)
    r = reader()
    first = r.read([p for _, p in events[:70]], received=0.0)
    second = r.read([p for _, p in events[60:]], received=0.0)  # overlapping: 60..69 again
    assert first is not None and second is not None
    assert [e.position for e in first.events + second.events] == [id_ for id_, _ in events]
    assert second.through == events[-1][0]


# -- dead letters ---------------------------------------------------------------------------------


def test_malformed_event_becomes_a_dead_letter_with_its_recovered_position():
    events = offered(30)
    index = next(i for i, (id_, _) in enumerate(events) if id_ & 0x3FFF == 2)  # a non-BLOCK_CONFIRMED event
    bad_id, bad_payload = events[index]
    broken = truncated_with_id(bad_payload)
    payloads = [p for _, p in events]
    payloads[index] = broken
    r = reader()
    chunk = r.read(payloads, received=3.0)
    assert chunk is not None
    assert bad_id not in [e.position for e in chunk.events]
    assert len(chunk.events) == len(events) - 1
    [letter] = chunk.dead
    assert letter.position == bad_id
    assert letter.payload == broken
    assert "malformed" in letter.reason and letter.reason.strip() != "malformed HubEvent:"
    assert letter.received == 3.0 and letter.partition == "1" and letter.source == "farcaster"
    assert r.stats.dead_letters == 1


def test_malformed_event_as_the_last_of_a_read_still_moves_through():
    events = offered(10)
    last_id, last_payload = events[-1]
    r = reader()
    chunk = r.read([p for _, p in events[:-1]] + [truncated_with_id(last_payload)], received=0.0)
    assert chunk is not None
    assert chunk.through == last_id and r.last_id == last_id
    assert [d.position for d in chunk.dead] == [last_id]


def test_replayed_malformed_event_is_not_dead_lettered_twice():
    events = offered(10)
    bad_id, bad_payload = events[3]
    broken = truncated_with_id(bad_payload)
    r = reader(last_id=events[5][0])
    chunk = r.read([broken] + [p for _, p in events[6:]], received=0.0)
    assert chunk is not None and chunk.dead == []
    assert r.stats.dead_letters == 0


@pytest.mark.parametrize("garbage", [b"\xff", b"\x08\x01\x1a\x09abc", b"\x08\x01"], ids=["bad-varint", "truncated-body", "no-id"])
def test_dead_letter_without_position_waits_for_a_chunk_that_has_one(garbage):
    r = reader()
    assert r.read([garbage], received=1.0) is None  # no chunk with through=0 ("replay everything")
    assert r.read([garbage + b"\xff"], received=2.0) is None
    assert r.last_id is None
    events = offered(5)
    chunk = r.read([p for _, p in events], received=3.0)
    assert chunk is not None
    assert chunk.through == events[-1][0] > 0
    assert [d.payload for d in chunk.dead] == [garbage, garbage + b"\xff"]
    assert all(d.position is None for d in chunk.dead)
    assert [d.received for d in chunk.dead] == [1.0, 2.0]
    assert len(chunk.events) == 5
    # handed on exactly once
    later = r.read([p for _, p in offered(8)[5:]], received=4.0)
    assert later is not None and later.dead == []
    assert r.stats.dead_letters == 2


def test_dead_letter_without_position_goes_with_the_current_chunk_once_an_id_is_known():
    events = offered(5)
    r = reader()
    chunk = r.read([events[0][1], b"\xff", events[1][1]], received=0.0)
    assert chunk is not None and chunk.through == events[1][0]
    assert len(chunk.dead) == 1 and chunk.dead[0].position is None


def test_merge_message_without_a_message_is_a_dead_letter():
    events = offered(5)
    block = events[0][0] >> 14
    empty = compose_hub_event(MERGE_MESSAGE, events[-1][0] + 1, b"", block, SHARD, 100)
    r = reader()
    chunk = r.read([p for _, p in events] + [empty], received=0.0)
    assert chunk is not None
    [letter] = chunk.dead
    assert letter.position == events[-1][0] + 1
    assert "MERGE_MESSAGE" in letter.reason and "no message" in letter.reason
    assert chunk.through == events[-1][0] + 1
    assert [e.position for e in chunk.events] == [id_ for id_, _ in events]


def test_event_for_another_shard_is_a_dead_letter_that_does_not_move_the_cursor():
    events = offered(3)
    foreign_id = events[-1][0] + 1
    r = reader()
    chunk = r.read([p for _, p in events] + [shard2_event(foreign_id)], received=0.0)
    assert chunk is not None
    assert [d.position for d in chunk.dead] == [None]  # its id belongs to another shard's sequence
    assert "shard 2" in chunk.dead[0].reason
    assert chunk.through == events[-1][0]


def shard2_event(event_id: int) -> bytes:
    """A valid MERGE_MESSAGE of shard 2, re-stamped with ``event_id``."""
    for id_, payload in generate_offered(SIM, 2, 50):
        keys = scan_hub_event(payload)
        if keys.event_type == MERGE_MESSAGE and keys.msg_hash:
            assert payload.startswith(b"\x08\x01\x10")
            _, after_id = read_varint(payload, 3)
            return b"\x08\x01\x10" + encode_varint(event_id) + payload[after_id:]
    raise AssertionError("no MERGE_MESSAGE on shard 2")


# -- gaps -----------------------------------------------------------------------------------------


def blocks(events: list[tuple[int, bytes]]) -> list[list[tuple[int, bytes]]]:
    out: dict[int, list[tuple[int, bytes]]] = {}
    for id_, payload in events:
        out.setdefault(id_ >> 14, []).append((id_, payload))
    return list(out.values())


def test_complete_blocks_report_no_gap():
    r = reader()
    r.read([p for _, p in offered(500)], received=0.0)
    assert r.stats.gaps == 0 and r.stats.missed_events == 0


def test_gap_reported_when_block_confirmed_counts_disagree():
    events = offered(400)
    by_block = blocks(events)
    victim = next(i for i, b in enumerate(by_block[:-1]) if len(b) >= 3)
    missing_id = by_block[victim][2][0]
    payloads = [p for id_, p in events if id_ != missing_id]
    r = reader()
    chunk = r.read(payloads, received=0.0)
    assert chunk is not None
    assert r.stats.gaps == 1
    assert r.stats.missed_events == 1
    assert missing_id not in [e.position for e in chunk.events]


def test_retention_gap_when_the_stream_starts_past_the_requested_id():
    events = offered(400)
    later_blocks = blocks(events)[5:]
    r = reader(last_id=events[0][0], from_id=events[0][0] + 1)
    r.read([p for b in later_blocks for _, p in b], received=0.0)
    assert r.stats.gaps >= 1


def test_corrupt_events_that_are_dead_lettered_are_not_reported_as_missed():
    """A malformed event was received (it is in the dead-letter stream), not skipped by the node."""
    config = SnapchainSimConfig(shards=2, seed=7, corrupt_every=5)
    events = generate_offered(config, SHARD, 300)
    r = reader()
    chunk = r.read([p for _, p in events], received=0.0)
    assert chunk is not None and len(chunk.dead) >= 10
    assert r.stats.missed_events == 0, "dead-lettered events were counted as missed by the gap detector"
    assert r.stats.gaps == 0


# -- SubscribeRequest -----------------------------------------------------------------------------


@pytest.mark.parametrize("from_id", [0, 1, 16385, (1 << 40) + 7, None])
@pytest.mark.parametrize("shard", [1, 3])
def test_subscribe_request_reads_back_with_the_node_schema(from_id, shard):
    types = [1, 2, 3, 6, 9, 10, 11]
    parsed = SubscribeRequest.parse(subscribe_request(shard, from_id, types))
    assert [int(t) for t in parsed.event_types] == types
    assert parsed.from_id == from_id  # 0 present (replay from the oldest), None absent (live)
    assert parsed.shard_index == shard


def test_server_event_types_always_lists_types():
    every = server_event_types(FarcasterSettings())
    assert every, "an empty list makes the node send nothing"
    assert set(every) == {t for t in HUB_EVENT_TYPES if t != 0}
    only = server_event_types(load_config(environ={}, overrides={"farcaster.event_types": "merge_message,PRUNE_MESSAGE"}).farcaster)
    assert only == sorted({MERGE_MESSAGE, 2, BLOCK_CONFIRMED})
    parsed = SubscribeRequest.parse(subscribe_request(1, 0, only))
    assert sorted(int(t) for t in parsed.event_types) == only


# -- the local event-type filter ------------------------------------------------------------------


def test_block_confirmed_subscribed_only_for_the_gap_checks_is_dropped_by_the_local_filter():
    """event_types without BLOCK_CONFIRMED: the node is still asked for it (gap checks), so it
    arrives, feeds the gap detector, moves the cursor, and is dropped by the key filter."""
    from weir.networks.farcaster import key_filter

    settings = load_config(environ={}, overrides={"farcaster.event_types": "MERGE_MESSAGE,PRUNE_MESSAGE"}).farcaster
    subscribed = server_event_types(settings)
    assert BLOCK_CONFIRMED in subscribed
    # what the node sends for that request: the subscribed types only
    sent = [(id_, p) for id_, p in offered(600) if scan_hub_event(p).event_type in subscribed]
    confirmed = [id_ for id_, p in sent if scan_hub_event(p).event_type == BLOCK_CONFIRMED]
    assert len(confirmed) >= 10
    r = reader(subscribed=subscribed)
    r.keep = key_filter(settings)
    chunk = r.read([p for _, p in sent], received=0.0)
    assert chunk is not None
    assert [e.position for e in chunk.events] == [id_ for id_, _ in sent if id_ not in set(confirmed)]
    assert {e.kind for e in chunk.events} == {"MERGE_MESSAGE", "PRUNE_MESSAGE"}
    assert chunk.through == sent[-1][0]  # the dropped events are covered by the cursor
    assert r.stats.filtered == len(confirmed)
    assert r.stats.gaps == 0, "the BLOCK_CONFIRMED counts must still reach the gap detector"


def test_no_event_types_keeps_block_confirmed():
    from weir.networks.farcaster import key_filter

    assert key_filter(FarcasterSettings()) is None
    settings = load_config(environ={}, overrides={"farcaster.event_types": "BLOCK_CONFIRMED"}).farcaster
    keep = key_filter(settings)
    assert keep is not None
    kinds = {scan_hub_event(p).event_type: keep(scan_hub_event(p)) for _, p in offered(200)}
    assert kinds[BLOCK_CONFIRMED] is True and kinds[MERGE_MESSAGE] is False


# -- size limit and validity -------------------------------------------------------------------------


def test_an_oversized_event_with_a_plausible_id_is_dead_lettered_and_passed():
    events = offered(10)
    big_id, big_payload = events[4]
    r = reader()
    r.max_message_bytes = 1_000
    r.dead_letter_bytes = 64
    huge = big_payload
    items = [p for _, p in events]
    items[4] = SkippedMessage(size=5_243_065, head=huge[:100], why="above the 1000-byte limit")
    chunk = r.read(items, received=0.0)
    assert chunk is not None
    [letter] = chunk.dead
    assert letter.position == big_id and letter.payload == huge[:64]
    assert "5243065 bytes" in letter.reason and "first 64 bytes kept" in letter.reason
    assert [e.position for e in chunk.events] == [i for i, _ in events if i != big_id]
    assert chunk.through == events[-1][0] and r.stats.oversized == 1


def test_a_whole_message_over_the_limit_is_cut_to_its_head():
    events = offered(3)
    r = reader()
    r.max_message_bytes = 40
    r.dead_letter_bytes = 32
    chunk = r.read([p for _, p in events], received=0.0)
    assert chunk is not None
    long_ones = [i for i, p in events if len(p) > 40]
    assert [d.position for d in chunk.dead] == long_ones
    assert all(len(d.payload) == 32 for d in chunk.dead)


def test_an_oversized_event_whose_id_cannot_be_read_keeps_the_cursor():
    events = offered(3)
    r = reader()
    chunk = r.read([p for _, p in events] + [SkippedMessage(size=9_000_000, head=b"\xff\xff", why="x")], received=0.0)
    assert chunk is not None and chunk.through == events[-1][0]
    [letter] = chunk.dead
    assert letter.position is None and "its id could not be read" in letter.reason


def forged(payload: bytes) -> bytes:
    """A MERGE_MESSAGE whose signature's last byte is flipped (same length: only the check can tell)."""
    keys = scan_hub_event(payload)
    at = payload.index(keys.msg_hash) + len(keys.msg_hash)
    sig_at = payload.index(b"\x22\x40", at) + 2
    return payload[: sig_at + 63] + bytes([payload[sig_at + 63] ^ 1]) + payload[sig_at + 64 :]


def test_a_forged_signature_is_dead_lettered_and_the_cursor_moves_past_it():
    events = offered(40)
    index = next(i for i, (_, p) in enumerate(events) if scan_hub_event(p).event_type == MERGE_MESSAGE)
    items = [p for _, p in events]
    items[index] = forged(items[index])
    r = reader()
    chunk = r.read(items, received=0.0)
    assert chunk is not None
    [letter] = chunk.dead
    assert letter.position == events[index][0] and "signature does not verify" in letter.reason
    assert len(chunk.events) == len(events) - 1 and r.stats.invalid_messages == 1
    r2 = reader()
    r2.verify = False  # farcaster.verify = false: persisted as received
    assert len(r2.read(items, received=0.0).events) == len(events)


def test_verification_is_off_the_filtered_out_path():
    events = offered(40)
    items = [forged(p) if scan_hub_event(p).event_type == MERGE_MESSAGE else p for _, p in events]
    r = reader()
    r.keep = lambda keys: keys.event_type != MERGE_MESSAGE
    chunk = r.read(items, received=0.0)
    assert chunk is not None and chunk.dead == [] and r.stats.invalid_messages == 0


def test_grpclibs_missing_transport_after_a_reset_is_a_network_fault_even_from_close():
    """grpclib 0.4.9 deletes a reset connection's transport: using or closing the channel raises
    AttributeError, which must reach the reconnect loop as a network fault (seen in the chaos
    suite: raised from channel.close(), it crashed the source instead)."""
    from weir.actors.farcaster import _grpclib_reset_is_a_network_fault, is_transient

    with pytest.raises(ConnectionResetError) as caught:
        with _grpclib_reset_is_a_network_fault():
            raise AttributeError("'Connection' object has no attribute '_transport'")
    assert is_transient(caught.value)
    with pytest.raises(AttributeError):  # any other AttributeError is a bug: it stays one
        with _grpclib_reset_is_a_network_fault():
            raise AttributeError("'NoneType' object has no attribute 'shard'")
