"""Bad content from a Snapchain node, end to end: the simulator serves ~400 valid events with one
bad item among them over its real gRPC socket, weir writes to a real redis-server.

For each kind of bad item: every valid event persisted once and in order, the bad item in the
dead-letter stream with its reason, the cursor at the last valid id (so never at a bogus one: it
only grows), and no crash loop (no restart of the pipeline, no escalation).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from weir.codecs.farcaster_keys import MERGE_MESSAGE, scan_hub_event
from weir.codecs.protowire import encode_varint, read_varint
from weir.sim.farcaster_data import SnapchainSimConfig, generate_offered
from weir.sim.farcaster_faults import Injection, valid_after_faults, with_message

from helpers import (
    assert_exact,
    capture_json_logs,
    cursor_position,
    dead_entries,
    e2e_config,
    in_process_sim,
    running_service,
    stream_entries,
    wait_for,
)

pytestmark = pytest.mark.integration

PARITY = Path(__file__).parent / "fixtures" / "farcaster" / "parity"
SHARD = 1
TOTAL = 400
BOGUS = 1 << 60
TIMEOUT = 30.0


def base_config(injections: tuple[Injection, ...] = ()) -> SnapchainSimConfig:
    return SnapchainSimConfig(shards=1, seed=23, rate=0, history=TOTAL, total=TOTAL, injections=injections)


def generated() -> list[tuple[int, bytes]]:
    return generate_offered(base_config(), SHARD, TOTAL)


def a_merge_near_the_middle() -> int:
    events = generated()
    return next(i for i in range(TOTAL // 2, TOTAL) if scan_hub_event(events[i][1]).event_type == MERGE_MESSAGE)


def restamp(payload: bytes, new_id: int) -> bytes:
    _, pos = read_varint(payload, 1)
    _, after_id = read_varint(payload, pos + 1)
    return payload[: pos + 1] + encode_varint(new_id) + payload[after_id:]


def fault(kind: str) -> tuple[Injection, str, bool]:
    """The injection, the words its dead letter's reason must hold, and whether it keeps a position."""
    at = a_merge_near_the_middle()
    payload = generated()[at][1]
    if kind == "bogus_id":
        return Injection(shard=SHARD, at=at, action="insert", payload=restamp(payload, BOGUS)), "implausible id 1152921504606846976", False
    if kind == "bogus_id_malformed":
        broken = restamp(payload, BOGUS)[:40]
        return Injection(shard=SHARD, at=at, action="insert", payload=broken), "implausible id 1152921504606846976", False
    if kind == "oversized":
        return Injection(shard=SHARD, at=at, action="oversize", size=5_243_065), "5243065 bytes", True
    if kind == "forged_signature":
        return Injection(shard=SHARD, at=at, action="forge"), "signature does not verify", True
    if kind == "altered_cast":
        return Injection(shard=SHARD, at=at, action="alter"), "hash mismatch", True
    if kind in ("invalid_hash", "invalid_signature"):
        message = (PARITY / f"{kind}.bin").read_bytes()
        words = "hash mismatch" if kind == "invalid_hash" else "signature does not verify"
        return Injection(shard=SHARD, at=at, action="message", payload=message), words, True
    raise AssertionError(kind)


KINDS = ["bogus_id", "bogus_id_malformed", "oversized", "forged_signature", "altered_cast", "invalid_hash", "invalid_signature"]


@pytest.mark.parametrize("kind", KINDS)
async def test_one_bad_item_among_400_is_dead_lettered_and_nothing_valid_is_lost(redis_server, redis_client, kind):
    await one_bad_item(redis_server, redis_client, kind)


@pytest.mark.parametrize("workers", [0, 2])
async def test_verification_in_worker_processes_or_in_the_reader_dead_letters_the_same(redis_server, redis_client, workers):
    stats = await one_bad_item(redis_server, redis_client, "forged_signature", farcaster__verify_workers=str(workers))
    assert stats.invalid_messages == 1
    # 400 events replayed at once come in batches far above the inline threshold: all go to workers.
    assert (stats.verified_in_workers > 0) == (workers > 0)


async def one_bad_item(redis_server, redis_client, kind: str, **overrides: str):
    """Serve ~400 events with one bad item of ``kind``; check everything; the shard's stats."""
    injection, reason, keeps_position = fault(kind)
    sim_config = base_config((injection,))
    valid = valid_after_faults(generated(), SHARD, [injection])
    bad_id = generated()[injection.at][0]
    with capture_json_logs() as logs:
        async with in_process_sim(sim_config) as (_, url):
            async with running_service(e2e_config(redis_server.url, url, shards="1", **overrides)) as (service, _):
                view = service.partitions[0]
                await wait_for(lambda: view.sink.cursor == valid[-1][0] and view.sink.dead_appended == 1,
                               timeout=TIMEOUT, what="every valid event and the dead letter")
                assert service.root.statistics().restarts == 0 and service.root.statistics().escalations == 0
                assert view.sink.supervisor.statistics().restarts == 0  # no crash, let alone a loop
    assert_exact(await stream_entries(redis_client, SHARD), valid, shard=SHARD)
    [(_, letter)] = await dead_entries(redis_client, SHARD)
    assert reason.encode() in letter[b"reason"], letter[b"reason"]
    assert letter[b"position"] == (b"%d" % bad_id if keeps_position else b"")
    if kind == "oversized":
        assert len(letter[b"data"]) == 1024  # farcaster.dead_letter_bytes
    assert await cursor_position(redis_client, SHARD) == valid[-1][0]
    assert [line["reason"] for line in logs.of("dead_letter")] == [letter[b"reason"].decode()]
    return view.source


async def test_valid_fixture_messages_served_by_the_node_are_persisted(redis_server, redis_client):
    """The four valid parity messages, each in place of a generated message: all verify, all persisted."""
    events = generated()
    merges = [i for i in range(TOTAL) if scan_hub_event(events[i][1]).event_type == MERGE_MESSAGE][:4]
    paths = sorted(PARITY.glob("valid_*.bin"))
    assert len(paths) == 4
    injections = tuple(Injection(shard=SHARD, at=i, action="message", payload=p.read_bytes()) for i, p in zip(merges, paths))
    expected = list(events)
    for injection in injections:
        id_, payload = events[injection.at]
        expected[injection.at] = (id_, with_message(payload, injection.payload))
    async with in_process_sim(base_config(injections)) as (_, url):
        async with running_service(e2e_config(redis_server.url, url, shards="1")) as (service, _):
            view = service.partitions[0]
            await wait_for(lambda: view.sink.cursor == events[-1][0], timeout=TIMEOUT, what="every event")
    assert_exact(await stream_entries(redis_client, SHARD), expected, shard=SHARD)
    assert await dead_entries(redis_client, SHARD) == []


async def test_a_node_that_keeps_sending_bogus_ids_is_refused_and_reported(redis_server, redis_client):
    """Bogus ids in a row: dead-lettered, the node dropped and reported (log, metric, /readyz), and
    once it serves valid events again they are all persisted."""
    at = a_merge_near_the_middle()
    payload = generated()[at][1]
    injections = tuple(Injection(shard=SHARD, at=at, action="insert", payload=restamp(payload, BOGUS + n)) for n in range(3))
    valid = generated()
    with capture_json_logs() as logs:
        async with in_process_sim(base_config(injections)) as (_, url):
            config = e2e_config(redis_server.url, url, shards="1", farcaster__max_bad_positions="3")
            async with running_service(config) as (service, _):
                view = service.partitions[0]
                await wait_for(lambda: view.sink.cursor == valid[-1][0], timeout=TIMEOUT, what="every valid event")
                assert view.source.refusals >= 1
                assert service.root.statistics().escalations == 0
    refusals = logs.of("node_refused")
    assert refusals and "3 implausible ids in a row" in refusals[0]["reason"]
    assert_exact(await stream_entries(redis_client, SHARD), valid, shard=SHARD)
    dead = await dead_entries(redis_client, SHARD)
    assert len(dead) >= 3 and all(fields[b"position"] == b"" for _, fields in dead)
    assert await cursor_position(redis_client, SHARD) == valid[-1][0]
